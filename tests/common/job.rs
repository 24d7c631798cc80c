//! A `wrongbook run` child process, the way an operator runs it, for tests against real
//! services: started with a config file, waited on until the table is as expected, stopped
//! with SIGTERM, and killed if the test ends without stopping it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use wrongbook::config::Config;

use super::{KafkaBroker, TestDatabase};

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

pub fn terminate(job: Job) -> std::process::ExitStatus {
    stop_with(job, "TERM")
}

/// Sends the job signal `name` (`TERM`, `INT`, ...) and waits, at most 30 s, for it to exit.
pub fn stop_with(mut job: Job, name: &str) -> std::process::ExitStatus {
    let pid = job.child().id();
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = job.child().try_wait().unwrap() {
            job.0 = None;
            return status;
        }
        if Instant::now() > deadline {
            panic!("the process did not stop within 30 s of SIG{name}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` distinct ports on 127.0.0.1, free when chosen, for processes that bind them a moment
/// later (a cluster's hostfile). They are taken below the kernel's ephemeral range, so that no
/// outgoing connection of a test running meanwhile (MariaDB, the broker) can be given one, and
/// from a cursor that moves on with every call, so that parallel tests choose different ones.
pub fn listen_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_start.clamp(10_000 + 64, 65_536));
    let span = high - low;
    // Processes start at different places (pid), threads move the shared cursor on.
    let start = std::process::id().wrapping_mul(7919) % span;
    let mut held = Vec::new();
    for _ in 0..span {
        let offset = CURSOR.fetch_add(1, Ordering::Relaxed);
        let port = (low + (start + offset) % span) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
            if held.len() == n {
                return held
                    .iter()
                    .map(|l| l.local_addr().unwrap().port())
                    .collect();
            }
        }
    }
    panic!("no {n} free ports between {low} and {high}");
}

/// The shipped spec and its examples (a new event type, a lookup table), with 1 s dimension refreshes and the example new event type appended.
pub fn test_spec(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = std::fs::read_to_string(root.join("dataflows/wrongbook.toml")).unwrap();
    let example = ["new-event-type.toml", "lookup-table.toml"]
        .map(|file| std::fs::read_to_string(root.join("dataflows/examples").join(file)).unwrap())
        .join("\n");
    assert!(spec.contains("refresh_interval = \"30m\""));
    let path = dir.join("spec.toml");
    std::fs::write(
        &path,
        format!("{spec}\n{example}")
            .replace("refresh_interval = \"30m\"", "refresh_interval = \"1s\""),
    )
    .unwrap();
    path
}

/// A config file for the job; returns the config and its path and metrics address.
pub fn job_config(
    db: &TestDatabase,
    broker: &KafkaBroker,
    topic: &str,
    extra: &str,
) -> (Config, PathBuf, String) {
    let spec = test_spec(db.dir());
    let metrics = format!("127.0.0.1:{}", free_port());
    let path = db.dir().join("job.toml");
    std::fs::write(
        &path,
        format!(
            "workers = 2\nspec = \"{}\"\n[mysql]\nurl = \"{}\"\nusername = \"root\"\n\
             [routing]\npoll_interval = \"300ms\"\n\
             [kafka]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n\
             alerts_topic = \"{topic}-alerts\"\nmetrics_topic = \"{topic}-metrics\"\n\
             group_id = \"{topic}-group\"\nmetrics_interval = \"500ms\"\n\
             [engine]\nepoch_interval = \"100ms\"\n[checkpoint]\ninterval = \"1s\"\n\
             [metrics]\nlisten = \"{metrics}\"\n{extra}",
            spec.display(),
            db.config.mysql.url,
            broker.bootstrap,
        ),
    )
    .unwrap();
    let config = Config::load_with_env(Some(&path), std::iter::empty()).unwrap();
    // The example lookup table's source, empty.
    config
        .database()
        .connect()
        .unwrap()
        .execute_script(
            "CREATE TABLE IF NOT EXISTS question_bank (question_id VARCHAR(64) PRIMARY KEY, \
             difficulty VARCHAR(20), knowledge_point VARCHAR(100))",
        )
        .unwrap();
    wrongbook::source::kafka::ensure_topic(&config.kafka, topic, 4).unwrap();
    for t in [&config.kafka.alerts_topic, &config.kafka.metrics_topic] {
        wrongbook::source::kafka::ensure_topic(&config.kafka, t, 1).unwrap();
    }
    (config, path, metrics)
}

/// `GET path` from the job's HTTP endpoint: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
