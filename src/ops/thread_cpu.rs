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

/// The calling thread's CPU time so far (Linux: `/proc/thread-self/schedstat`, whose first
/// field is the nanoseconds it has run); `None` where that cannot be read.
pub fn this_thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
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
}
