//! CPU time by thread role: each thread of a run adds the CPU time it used to its role's total
//! as it ends, so that a run can say where its CPU went: the workers, the source readers or the
//! sink threads. On two workers on two cores the helpers' share comes out of the workers'; on
//! one worker they use the second core. (The thread that frees the join state after a bounded
//! run is not counted: the run does not wait for it.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// What a thread of a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Source,
    Sink,
}

/// CPU time used by the ended threads of a run, by role.
#[derive(Debug, Default)]
pub struct ThreadCpu {
    worker: AtomicU64,
    source: AtomicU64,
    sink: AtomicU64,
}

impl ThreadCpu {
    /// Adds the calling thread's CPU time so far to `role`: call it as the thread ends. Does
    /// nothing where the system does not tell a thread's CPU time.
    pub fn add_this_thread(&self, role: Role) {
        if let Some(cpu) = this_thread_cpu() {
            self.total(role)
                .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    fn total(&self, role: Role) -> &AtomicU64 {
        match role {
            Role::Worker => &self.worker,
            Role::Source => &self.source,
            Role::Sink => &self.sink,
        }
    }

    /// The totals so far, in seconds.
    pub fn seconds(&self) -> CpuSeconds {
        let seconds = |role| self.total(role).load(Ordering::Relaxed) as f64 / 1e9;
        CpuSeconds {
            workers: seconds(Role::Worker),
            source: seconds(Role::Source),
            sinks: seconds(Role::Sink),
        }
    }
}

/// CPU seconds by thread role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuSeconds {
    pub workers: f64,
    pub source: f64,
    pub sinks: f64,
}

impl std::iter::Sum for CpuSeconds {
    /// Each role's seconds over several runs (engines that ran at the same time).
    fn sum<I: Iterator<Item = CpuSeconds>>(runs: I) -> CpuSeconds {
        runs.fold(CpuSeconds::default(), |sum, run| CpuSeconds {
            workers: sum.workers + run.workers,
            source: sum.source + run.source,
            sinks: sum.sinks + run.sinks,
        })
    }
}

/// The calling thread's CPU time so far (`CLOCK_THREAD_CPUTIME_ID`, which counts the slice the
/// thread is running in; `/proc/thread-self/schedstat` does not, and reads 0 for a thread that
/// has not been switched out or ticked yet); `None` where the clock cannot be read.
pub fn this_thread_cpu() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec through the valid pointer it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_adds_its_time_to_its_role_only() {
        let cpu = std::sync::Arc::new(ThreadCpu::default());
        let busy = cpu.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut x = 0u64;
            while started.elapsed() < Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            busy.add_this_thread(Role::Source);
        })
        .join()
        .unwrap();
        let seconds = cpu.seconds();
        if cfg!(target_os = "linux") {
            // A thread that spins for 50 ms runs for most of them, however loaded the machine;
            // a wrong unit (µs, ms, or seconds taken for nanoseconds) misses both bounds.
            assert!(seconds.source > 0.01, "{seconds:?}");
            assert!(seconds.source < 10.0, "{seconds:?}");
        }
        assert_eq!((seconds.workers, seconds.sinks), (0.0, 0.0));
    }

    #[test]
    fn a_thread_that_never_waited_has_its_time_counted() {
        // A short run that is never switched out: a clock that counts only finished slices
        // reads 0 here.
        let cpu = std::thread::spawn(|| {
            let started = std::time::Instant::now();
            let mut x = 0u64;
            while started.elapsed() < Duration::from_micros(300) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            this_thread_cpu()
        })
        .join()
        .unwrap();
        if cfg!(target_os = "linux") {
            assert!(cpu.expect("a thread clock") > Duration::ZERO);
        }
    }
}
