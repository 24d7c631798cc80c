//! `bench --scaling-rounds`: how throughput scales from one worker to N, on the same events.
//!
//! A machine's speed drifts over seconds and minutes (other tenants of a VM's host, frequency,
//! memory the host backs lazily), often by more than the difference between one and two
//! workers. So the passes alternate: each round runs the engine once on one worker, once on
//! N, and once as N independent one-worker engines at the same time, the order turning from
//! round to round, over the same events and without a sink (the dataflow alone, as the
//! issue's scaling target is stated). The figure is reported two ways: the ratio of the
//! medians, and the median of each round's own ratio, which a drift between rounds disturbs
//! less.
//!
//! Beside them, what bounds it. The N independent engines each take the events of the records
//! one of N workers would own (the split the exchange makes, done ahead into N files), so
//! together they do the N-worker engine's work and hold its state, with nothing exchanged and
//! nothing shared but the machine (each has its own reader and sink thread): what N cores of
//! this machine give this job when its parts need not talk. The N-worker engine is measured
//! against that as well. Then the share of a one-worker pass's CPU taken by its helper threads
//! (reader, sink), which run on the spare core for free there and come out of the workers'
//! time with a worker per core, and how busy the N-worker passes kept their cores.

use std::borrow::Cow;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dataflow::process::wide_id;
use crate::ops::thread_cpu::CpuSeconds;
use crate::sink::SinkTarget;

use super::bench::{run_measuring_cpu, BenchError, BenchInput};
use super::gen::BlockWriter;

/// One pass of the engine over the events.
#[derive(Debug, Clone, Serialize)]
pub struct PassFigure {
    pub round: usize,
    pub workers: usize,
    /// Engines run at the same time on `workers` workers each: 1, or N for the pass of N
    /// independent one-worker engines, each on its part of the events.
    pub copies: usize,
    /// Messages, of all engines.
    pub events: u64,
    /// Until the last engine finished.
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
    /// Median events/s of the passes of N independent one-worker engines at once, each on
    /// the events of one worker's share of the records (all of their events over the time
    /// until the last finished).
    pub independent_median: f64,
    /// Each round's N independent engines' events/s over its one-worker events/s: what N
    /// cores of this machine give this job with nothing exchanged or shared.
    pub independent_round_ratios: Vec<f64>,
    pub median_independent_round_ratio: f64,
    /// Each round's N-worker events/s over its N independent engines' events/s.
    pub workers_of_independent_round_ratios: Vec<f64>,
    pub median_workers_of_independent: f64,
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
    let parts = partition(bench_input.input, workers)?;
    let mut passes = Vec::with_capacity(3 * rounds);
    // (workers, copies) of the three passes, which take turns at going first.
    let kinds = [(1, 1), (workers, 1), (1, workers)];
    for round in 1..=rounds {
        for turn in 0..kinds.len() {
            let (w, copies) = kinds[(turn + round - 1) % kinds.len()];
            let pass = run_pass(bench_input, &parts, round, w, copies)?;
            let what = match copies {
                1 => format!("{w} worker(s)"),
                n => format!("{n} independent 1-worker engines, a part each"),
            };
            eprintln!(
                "scaling round {round}/{rounds}: {what} {:.0} events/s",
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
    // The passes of one engine on `w` workers, and of the independent engines.
    let of = |w: usize| {
        passes
            .iter()
            .filter(move |p| p.workers == w && p.copies == 1)
    };
    let independent = || passes.iter().filter(|p| p.copies > 1);
    let rate_in = |round: usize, w: usize, copies: usize| {
        passes
            .iter()
            .find(|p| p.round == round && p.workers == w && p.copies == copies)
            .map(|p| p.events_per_second)
    };
    // Each round's rate of pass `a` over its rate of pass `b`, given as (workers, copies).
    let round_ratios = |a: (usize, usize), b: (usize, usize)| -> Vec<f64> {
        (1..=rounds)
            .filter_map(|round| {
                Some(rate_in(round, a.0, a.1)? / rate_in(round, b.0, b.1)?.max(1e-9))
            })
            .collect()
    };
    let one_worker_median = median(of(1).map(|p| p.events_per_second).collect());
    let workers_median = median(of(workers).map(|p| p.events_per_second).collect());
    let round_ratios_of_workers = round_ratios((workers, 1), (1, 1));
    let independent_round_ratios = round_ratios((1, workers), (1, 1));
    let workers_of_independent_round_ratios = round_ratios((workers, 1), (1, workers));
    ScalingFigure {
        workers,
        rounds,
        one_worker_median,
        workers_median,
        ratio_of_medians: workers_median / one_worker_median.max(1e-9),
        median_round_ratio: median(round_ratios_of_workers.clone()),
        round_ratios: round_ratios_of_workers,
        one_worker_helper_share: median(of(1).map(PassFigure::helper_share).collect()),
        workers_cores_busy: of(workers)
            .map(|p| p.cores_busy(cores))
            .collect::<Option<Vec<f64>>>()
            .map(median),
        independent_median: median(independent().map(|p| p.events_per_second).collect()),
        median_independent_round_ratio: median(independent_round_ratios.clone()),
        independent_round_ratios,
        median_workers_of_independent: median(workers_of_independent_round_ratios.clone()),
        workers_of_independent_round_ratios,
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

/// One pass: one engine on `workers` workers over the whole input, or (`copies` > 1)
/// `copies` one-worker engines at the same time over `parts`, after the state of the pass
/// before it is freed (it is freed on a thread of its own, which would otherwise run beside
/// this pass).
fn run_pass(
    bench_input: &BenchInput<'_>,
    parts: &[PathBuf],
    round: usize,
    workers: usize,
    copies: usize,
) -> Result<PassFigure, BenchError> {
    wait_for_freed_state(Duration::from_secs(60));
    let pipelines: Vec<_> = match copies {
        1 => vec![bench_input.pipeline(workers, SinkTarget::Discard)],
        _ => parts
            .iter()
            .map(|part| bench_input.pipeline_over(part, workers, SinkTarget::Discard))
            .collect(),
    };
    let stats: Vec<_> = pipelines.iter().map(|p| p.dataflow_stats.clone()).collect();
    let (summaries, cpu) = run_measuring_cpu(pipelines);
    let summaries = summaries.into_iter().collect::<Result<Vec<_>, _>>()?;
    let events = summaries.iter().map(|s| s.messages).sum::<u64>();
    let elapsed = summaries
        .iter()
        .map(|s| s.elapsed.as_secs_f64())
        .fold(0.0, f64::max);
    let cpu_seconds_by_thread = stats.iter().map(|s| s.thread_cpu.seconds()).sum();
    Ok(PassFigure {
        round,
        workers,
        copies,
        events,
        elapsed_seconds: elapsed,
        events_per_second: events as f64 / elapsed.max(1e-9),
        cpu_seconds: cpu,
        cpu_seconds_by_thread,
    })
}

/// Splits the events at `input` into `parts` files beside it, part `k` holding the events
/// of the records worker `k` of `parts` owns (by the payload's `wrongRecordId`, as the
/// generator writes it), in their order. An event without a readable record id (a bad
/// message) goes to the part of its line number.
fn partition(input: &Path, parts: usize) -> Result<Vec<PathBuf>, BenchError> {
    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        payload: Option<Payload<'a>>,
    }
    #[derive(Deserialize)]
    struct Payload<'a> {
        #[serde(rename = "wrongRecordId", borrow)]
        wrong_record_id: Option<Cow<'a, str>>,
    }
    let io = |path: &Path, e: std::io::Error| BenchError::Io(format!("{}: {e}", path.display()));
    let paths: Vec<PathBuf> = (0..parts)
        .map(|k| input.with_extension(format!("part-{k}-of-{parts}.jsonl")))
        .collect();
    let mut outs = paths
        .iter()
        .map(|path| {
            std::fs::File::create(path)
                .map(BlockWriter::new)
                .map_err(|e| io(path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let reader = std::io::BufReader::new(std::fs::File::open(input).map_err(|e| io(input, e))?);
    for (line, message) in reader.split(b'\n').enumerate() {
        let message = message.map_err(|e| io(input, e))?;
        let record = serde_json::from_slice::<Event<'_>>(&message)
            .ok()
            .and_then(|event| event.payload?.wrong_record_id);
        let part = match record {
            Some(id) => crate::dataflow::owner::owner(wide_id(&id), parts),
            None => line % parts,
        };
        let (out, path) = (&mut outs[part], &paths[part]);
        out.write_all(&message)
            .and_then(|_| out.write_all(b"\n"))
            .map_err(|e| io(path, e))?;
    }
    for (out, path) in outs.iter_mut().zip(&paths) {
        out.flush().map_err(|e| io(path, e))?;
    }
    Ok(paths)
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

    fn pass(
        round: usize,
        (workers, copies): (usize, usize),
        rate: f64,
        helpers: f64,
    ) -> PassFigure {
        PassFigure {
            round,
            workers,
            copies,
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
        let (one, two, apart) = ((1, 1), (2, 1), (1, 2));
        let passes = vec![
            pass(1, one, 100.0, 0.1),
            pass(1, two, 180.0, 0.05),
            pass(1, apart, 190.0, 0.1),
            pass(2, two, 170.0, 0.05),
            pass(2, apart, 170.0, 0.1),
            pass(2, one, 50.0, 0.3),
            pass(3, apart, 220.0, 0.1),
            pass(3, one, 110.0, 0.1),
            pass(3, two, 200.0, 0.05),
        ];
        let figure = summarize(passes, 2, 3, 2);
        let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-12, "{got} != {want}");
        assert_eq!(figure.one_worker_median, 100.0);
        assert_eq!(figure.workers_median, 180.0);
        close(figure.ratio_of_medians, 1.8);
        let expected = [1.8, 3.4, 200.0 / 110.0];
        assert_eq!(figure.round_ratios.len(), 3);
        for (got, want) in figure.round_ratios.iter().zip(expected) {
            close(*got, want);
        }
        close(figure.median_round_ratio, 200.0 / 110.0);
        // The independent engines: against one worker, and the two workers against them.
        assert_eq!(figure.independent_median, 190.0);
        let expected = [1.9, 3.4, 2.0];
        for (got, want) in figure.independent_round_ratios.iter().zip(expected) {
            close(*got, want);
        }
        close(figure.median_independent_round_ratio, 2.0);
        let expected = [180.0 / 190.0, 1.0, 200.0 / 220.0];
        for (got, want) in figure
            .workers_of_independent_round_ratios
            .iter()
            .zip(expected)
        {
            close(*got, want);
        }
        close(figure.median_workers_of_independent, 180.0 / 190.0);
        close(figure.one_worker_helper_share, 0.1);
        assert!((figure.workers_cores_busy.expect("cpu known") - 0.9).abs() < 1e-9);
        assert_eq!(figure.passes.len(), 9);
    }

    #[test]
    fn the_parts_hold_the_events_of_the_records_each_worker_owns_in_order() {
        let dir = std::env::temp_dir().join(format!("wrongbook-partition-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("events.jsonl");
        // Numeric ids own by their value; a text id (here with an escape) by its hash; a bad
        // line and one without a record id by their line number.
        let event = |id: &str| format!(r#"{{"type":"t","payload":{{"wrongRecordId":{id}}}}}"#);
        let lines = [
            event(r#""10""#),
            event(r#""11""#),
            event(r#""w\u002d1""#),
            "not json".to_owned(),
            event(r#""13""#),
            r#"{"type":"t","payload":{}}"#.to_owned(),
            event(r#""10""#),
        ];
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let parts = partition(&input, 2).unwrap();
        let read = |path: &PathBuf| -> Vec<String> {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let text_id_part = crate::dataflow::owner::owner(wide_id("w-1"), 2);
        let mut expected = [Vec::new(), Vec::new()];
        for (line, part) in [
            (0, 0),
            (1, 1),
            (2, text_id_part),
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 0),
        ] {
            expected[part].push(lines[line].clone());
        }
        assert_eq!(read(&parts[0]), expected[0]);
        assert_eq!(read(&parts[1]), expected[1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
