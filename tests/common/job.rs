//! A `wrongbook run` child process, the way an operator runs it, for tests against real
//! services: started with a config file, waited on until the table is as expected, stopped
//! with SIGTERM, and killed if the test ends without stopping it.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::TestDatabase;

/// A running job, killed if the test ends (or fails) without stopping it.
pub struct Job(pub Option<Child>);

impl Job {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the job is running")
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn start_job(config_path: &Path, log: &Path) -> Job {
    Job(Some(
        Command::new(env!("CARGO_BIN_EXE_wrongbook"))
            .args([
                "--log",
                "info",
                "run",
                "-c",
                config_path.to_str().unwrap(),
                "--progress-seconds",
                "1",
            ])
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start wrongbook run"),
    ))
}

/// Waits until the table equals `expected`, or fails after `limit`.
pub fn wait_for_table(
    db: &TestDatabase,
    expected: &std::collections::BTreeMap<i64, super::Row>,
    limit: Duration,
    log: &Path,
) {
    let deadline = Instant::now() + limit;
    loop {
        let table = db.read_table("dwd_wrong_record_wide_delta");
        if &table == expected {
            return;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let mut tail: Vec<&str> = log.lines().rev().take(12).collect();
            tail.extend(
                log.lines()
                    .filter(|l| l.contains("checkpoint") || l.contains("caught up")),
            );
            super::assert_tables_equal(
                &table,
                expected,
                &format!("job log (last lines, newest first):\n{}\n", tail.join("\n")),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn terminate(mut job: Job) -> std::process::ExitStatus {
    let pid = job.child().id();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = job.child().try_wait().unwrap() {
            job.0 = None;
            return status;
        }
        if Instant::now() > deadline {
            panic!("the job did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
