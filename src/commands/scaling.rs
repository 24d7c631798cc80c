//! `bench --scaling-rounds`: how throughput scales from one worker to N, on the same events.
//!
//! A machine's speed drifts over seconds and minutes (other tenants of a VM's host, frequency,
//! memory the host backs lazily), often by more than the difference between one and two
//! workers. So the passes alternate: each round runs the engine once on one worker and once on
//! N, the first of the pair taking turns, over the same file and without a sink (the dataflow
//! alone, as the scaling target is stated). The figure is reported two ways: the ratio
//! of the medians, and the median of each round's own ratio, which a drift between rounds
//! disturbs less. Beside them, the two things that bound it: the share of a one-worker pass's
//! CPU taken by its helper threads (reader, sink), which run on the spare core for free there
//! and come out of the workers' time with a worker per core, and how busy the N-worker passes
//! kept their cores.

use std::time::Duration;

use serde::Serialize;

use crate::ops::thread_cpu::CpuSeconds;
use crate::sink::SinkTarget;

use super::bench::{run_measuring_cpu, BenchError, BenchInput};

/// One pass of the engine over the events.
#[derive(Debug, Clone, Serialize)]
pub struct PassFigure {
    pub round: usize,
    pub workers: usize,
    pub events: u64,
    pub elapsed_seconds: f64,
    pub events_per_second: f64,
    /// CPU time (user + system) of the whole process during the pass.
    pub cpu_seconds: Option<f64>,
    pub cpu_seconds_by_thread: CpuSeconds,
}

impl PassFigure {
    /// The reader's and sink threads' share of the pass's CPU, by their own clocks.
    fn helper_share(&self) -> f64 {
        let t = &self.cpu_seconds_by_thread;
        let total = t.workers + t.source + t.sinks;
        (t.source + t.sinks) / total.max(1e-9)
    }

    /// CPU used ÷ (cores the workers could use × wall clock).
    fn cores_busy(&self, cores: usize) -> Option<f64> {
        let usable = self.workers.min(cores).max(1) as f64;
        self.cpu_seconds
            .map(|cpu| cpu / (usable * self.elapsed_seconds.max(1e-9)))
    }
}

/// How throughput scaled from one worker to [`ScalingFigure::workers`].
#[derive(Debug, Clone, Serialize)]
pub struct ScalingFigure {
    pub workers: usize,
    pub rounds: usize,
    /// Median events/s of the one-worker passes.
    pub one_worker_median: f64,
    /// Median events/s of the N-worker passes.
    pub workers_median: f64,
    /// `workers_median / one_worker_median`.
    pub ratio_of_medians: f64,
    /// Each round's N-worker events/s over its one-worker events/s.
    pub round_ratios: Vec<f64>,
    pub median_round_ratio: f64,
    /// Median share of a one-worker pass's CPU taken by the reader and sink threads. With no
    /// other loss, N workers on N cores reach at most N ÷ (1 + that share ÷ (1 − share)) times
    /// one worker.
    pub one_worker_helper_share: f64,
    /// Median, over the N-worker passes, of CPU ÷ (cores × wall clock).
    pub workers_cores_busy: Option<f64>,
    /// Every pass, in the order run.
    pub passes: Vec<PassFigure>,
}

/// Runs `rounds` rounds of a one-worker and a `workers`-worker pass, alternating which goes
/// first, and reports the scaling. Progress goes to stderr, a line per pass.
pub fn measure(
    bench_input: &BenchInput<'_>,
    workers: usize,
    rounds: usize,
) -> Result<ScalingFigure, BenchError> {
    let mut passes = Vec::with_capacity(2 * rounds);
    for round in 1..=rounds {
        let order = match round % 2 {
            1 => [1, workers],
            _ => [workers, 1],
        };
        for w in order {
            let pass = run_pass(bench_input, round, w)?;
            eprintln!(
                "scaling round {round}/{rounds}: {w} worker(s) {:.0} events/s",
                pass.events_per_second
            );
            passes.push(pass);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(summarize(passes, workers, rounds, cores))
}

/// The figure from the passes of `rounds` rounds (one pass of each worker count per round).
fn summarize(
    passes: Vec<PassFigure>,
    workers: usize,
    rounds: usize,
    cores: usize,
) -> ScalingFigure {
    let of = |w: usize| passes.iter().filter(move |p| p.workers == w);
    let rate_in = |round: usize, w: usize| {
        passes
            .iter()
            .find(|p| p.round == round && p.workers == w)
            .map(|p| p.events_per_second)
    };
    let one_worker_median = median(of(1).map(|p| p.events_per_second).collect());
    let workers_median = median(of(workers).map(|p| p.events_per_second).collect());
    let round_ratios: Vec<f64> = (1..=rounds)
        .filter_map(|round| Some(rate_in(round, workers)? / rate_in(round, 1)?.max(1e-9)))
        .collect();
    ScalingFigure {
        workers,
        rounds,
        one_worker_median,
        workers_median,
        ratio_of_medians: workers_median / one_worker_median.max(1e-9),
        median_round_ratio: median(round_ratios.clone()),
        round_ratios,
        one_worker_helper_share: median(of(1).map(PassFigure::helper_share).collect()),
        workers_cores_busy: of(workers)
            .map(|p| p.cores_busy(cores))
            .collect::<Option<Vec<f64>>>()
            .map(median),
        passes,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One pass of the engine on `workers` workers, after the state of the pass before it is
/// freed (it is freed on a thread of its own, which would otherwise run beside this pass).
fn run_pass(
    bench_input: &BenchInput<'_>,
    round: usize,
    workers: usize,
) -> Result<PassFigure, BenchError> {
    wait_for_freed_state(Duration::from_secs(60));
    let pipeline = bench_input.pipeline(workers, SinkTarget::Discard);
    let dataflow_stats = pipeline.dataflow_stats.clone();
    let (summary, cpu) = run_measuring_cpu(pipeline);
    let summary = summary?;
    Ok(PassFigure {
        round,
        workers,
        events: summary.messages,
        elapsed_seconds: summary.elapsed.as_secs_f64(),
        events_per_second: summary.events_per_second(),
        cpu_seconds: cpu,
        cpu_seconds_by_thread: dataflow_stats.thread_cpu.seconds(),
    })
}

/// Waits, at most `limit`, until no thread of this process is freeing a run's join state.
/// Where `/proc` cannot tell, returns at once.
fn wait_for_freed_state(limit: Duration) {
    let freeing = || {
        std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| {
            tasks.flatten().any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.trim_end() == crate::dataflow::join::FREEING_THREAD)
            })
        })
    };
    let started = std::time::Instant::now();
    while freeing() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(round: usize, workers: usize, rate: f64, helpers: f64) -> PassFigure {
        PassFigure {
            round,
            workers,
            events: 1000,
            elapsed_seconds: 1000.0 / rate,
            events_per_second: rate,
            cpu_seconds: Some(workers as f64 * 1000.0 / rate * 0.9),
            cpu_seconds_by_thread: CpuSeconds {
                workers: 1.0 - helpers,
                source: helpers,
                sinks: 0.0,
            },
        }
    }

    #[test]
    fn scaling_is_the_ratio_of_the_medians_and_the_median_of_each_rounds_ratio() {
        // Round 2's one-worker pass ran in a slow moment: the ratio of its own round is high,
        // while the median over rounds is not moved by it.
        let passes = vec![
            pass(1, 1, 100.0, 0.1),
            pass(1, 2, 180.0, 0.05),
            pass(2, 2, 170.0, 0.05),
            pass(2, 1, 50.0, 0.3),
            pass(3, 1, 110.0, 0.1),
            pass(3, 2, 200.0, 0.05),
        ];
        let figure = summarize(passes, 2, 3, 2);
        assert_eq!(figure.one_worker_median, 100.0);
        assert_eq!(figure.workers_median, 180.0);
        assert!((figure.ratio_of_medians - 1.8).abs() < 1e-12);
        let expected = [1.8, 3.4, 200.0 / 110.0];
        assert_eq!(figure.round_ratios.len(), 3);
        for (got, want) in figure.round_ratios.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{got} against {want}");
        }
        assert!((figure.median_round_ratio - 200.0 / 110.0).abs() < 1e-12);
        assert!((figure.one_worker_helper_share - 0.1).abs() < 1e-12);
        assert!((figure.workers_cores_busy.expect("cpu known") - 0.9).abs() < 1e-9);
        assert_eq!(figure.passes.len(), 6);
    }

    #[test]
    fn a_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
