//! Cluster mode: the same generated events (bad messages, duplicates and a dimension change
//! included) through 1×1, 1×4 and 2×2 (two processes on 127.0.0.1 started by
//! `scripts/run-cluster`, two workers each) give identical tables and identical outcome counts,
//! over a file and over Kafka (Tansu). And a 2-process job whose process is killed with
//! `kill -9` is restarted (both processes) and ends exact.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::job::{listen_ports, wait_for_table};
use common::{assert_tables_equal, reference, KafkaBroker, Row, TestDatabase};
use wrongbook::commands::gen::{
    dims_sql, generate, produce_messages, routing_sql, write_jsonl, GenOptions, Generated,
};
use wrongbook::commands::init_db::init_db;

const WIDE: &str = "dwd_wrong_record_wide_delta";
const BIN: &str = env!("CARGO_BIN_EXE_wrongbook");

fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-cluster")
}

/// Outcome counts by type: type → (accepted, skipped, dead letters, total).
type Counts = BTreeMap<String, [u64; 4]>;

/// The outcome counts summed over the summaries in `output`.
fn outcome_counts(output: &str) -> Counts {
    let mut counts = Counts::new();
    for line in output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 5 {
            continue;
        }
        let numbers: Vec<u64> = fields[1..].iter().filter_map(|f| f.parse().ok()).collect();
        if numbers.len() != 4 {
            continue;
        }
        let entry = counts.entry(fields[0].to_owned()).or_default();
        for (sum, n) in entry.iter_mut().zip(numbers) {
            *sum += n;
        }
    }
    counts
}

/// A database for one layout, with the dimensions, the routing rows and a config file.
fn database(
    generated: &Generated,
    broker: Option<&KafkaBroker>,
    name: &str,
) -> (TestDatabase, PathBuf) {
    let db = TestDatabase::mariadb().expect("MariaDB");
    let mut conn = init_db(&db.config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    let kafka = broker.map_or(String::new(), |b| {
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ntopic = \"{name}\"\nalerts_topic = \"{name}-alerts\"\n\
             metrics_topic = \"{name}-metrics\"\ngroup_id = \"{name}-{}\"\n",
            b.bootstrap,
            db.dir().display().to_string().replace('/', "_")
        )
    });
    let path = db.dir().join("job.toml");
    std::fs::write(
        &path,
        format!(
            "spec = \"{}\"\n[mysql]\nurl = \"{}\"\nusername = \"root\"\n\
             [engine]\nepoch_interval = \"100ms\"\n[checkpoint]\ninterval = \"1s\"\ndir = \"checkpoints\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[cluster]\nconnect_timeout = \"30s\"\n{kafka}",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("dataflows/wrongbook.toml")
                .display(),
            db.config.mysql.url
        ),
    )
    .unwrap();
    (db, path)
}

/// A hostfile for `processes` processes in `dir` (created when missing): a line each, a free
/// port of 127.0.0.1.
fn hostfile(dir: &Path, processes: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("hosts-{processes}"));
    let hosts: Vec<String> = listen_ports(processes)
        .into_iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    std::fs::write(&path, hosts.join("\n")).unwrap();
    path
}

/// Runs `args` (a wrongbook command) as `processes` processes of `workers` workers; returns
/// the combined output. Fails the test when a process fails.
fn run_layout(processes: usize, workers: usize, args: &[&str], log_dir: &Path) -> String {
    let workers = workers.to_string();
    let output = if processes == 1 {
        Command::new(BIN)
            .args(args)
            .args(["-w", &workers])
            .output()
            .unwrap()
    } else {
        Command::new(launcher())
            .arg(processes.to_string())
            .args(["--hostfile", hostfile(log_dir, processes).to_str().unwrap()])
            .args(["--log-dir", log_dir.to_str().unwrap()])
            .arg("--")
            .arg(BIN)
            .args(args)
            .args(["-w", &workers])
            .output()
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let logs: String = (0..processes)
        .map(|i| {
            std::fs::read_to_string(log_dir.join(format!("process-{i}.log"))).unwrap_or_default()
        })
        .collect();
    assert!(
        output.status.success(),
        "{processes}×{workers} failed: {}\n{}\n{logs}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

const LAYOUTS: [(usize, usize); 3] = [(1, 1), (1, 4), (2, 2)];

#[test]
fn file_replay_gives_the_same_table_and_counts_on_every_layout() {
    if TestDatabase::mariadb().is_none() {
        return;
    }
    let generated = generate(&GenOptions {
        events: 12_000,
        seed: 91,
        ..GenOptions::default()
    });
    let (model, expected) = reference(&generated.messages, &generated.dims_changed);
    let mut results: Vec<(BTreeMap<i64, Row>, Counts)> = Vec::new();
    for (processes, workers) in LAYOUTS {
        let (db, config) = database(&generated, None, "file");
        let input = db.dir().join("events.jsonl");
        write_jsonl(
            &mut std::fs::File::create(&input).unwrap(),
            &generated.messages,
        )
        .unwrap();
        let change = db.dir().join("change.sql");
        std::fs::write(&change, dims_sql(&generated.dims_changed)).unwrap();
        let output = run_layout(
            processes,
            workers,
            &[
                "replay",
                "-c",
                config.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--dims-after",
                change.to_str().unwrap(),
                "--quiet",
            ],
            &db.dir().join("logs"),
        );
        let table = db.read_table(WIDE);
        assert_tables_equal(&table, &expected, &format!("{processes}×{workers}"));
        let counts = outcome_counts(&output);
        assert_eq!(counts["all"][0] as usize, model.accepted, "{output}");
        assert_eq!(counts["all"][3], generated.messages.len() as u64);
        results.push((table, counts));
    }
    for (layout, result) in LAYOUTS.iter().zip(&results).skip(1) {
        assert_eq!(
            result.1, results[0].1,
            "outcome counts of {layout:?} and 1×1"
        );
    }
}

#[test]
fn kafka_run_gives_the_same_table_and_counts_on_every_layout() {
    let Some(broker) = KafkaBroker::start() else {
        return;
    };
    if TestDatabase::mariadb().is_none() {
        return;
    }
    let generated = generate(&GenOptions {
        events: 8_000,
        seed: 92,
        ..GenOptions::default()
    });
    let (model, expected) = reference(&generated.messages, &generated.dims);
    let mut config = wrongbook::config::Config::default();
    config.kafka.bootstrap_servers = broker.bootstrap.clone();
    config.kafka.topic = "cluster-events".into();
    wrongbook::source::kafka::ensure_topic(&config.kafka, "cluster-events", 6).unwrap();
    produce_messages(&config.kafka, &generated.messages).unwrap();
    let mut all_counts = Vec::new();
    for (processes, workers) in LAYOUTS {
        let (db, job) = database(&generated, Some(&broker), "cluster-events");
        let output = run_layout(
            processes,
            workers,
            &[
                "run",
                "-c",
                job.to_str().unwrap(),
                "--until-caught-up",
                "--progress-seconds",
                "60",
            ],
            &db.dir().join("logs"),
        );
        assert_tables_equal(
            &db.read_table(WIDE),
            &expected,
            &format!("{processes}×{workers}"),
        );
        let counts = outcome_counts(&output);
        assert_eq!(counts["all"][0] as usize, model.accepted, "{output}");
        assert_eq!(
            counts["all"][3],
            generated.messages.len() as u64,
            "{output}"
        );
        all_counts.push(counts);
    }
    assert!(all_counts.iter().all(|c| *c == all_counts[0]));
}

/// A 2-process job started by the launcher, killed if the test ends without stopping it.
struct ClusterJob(Option<Child>);

impl ClusterJob {
    fn start(config: &Path, log_dir: &Path) -> ClusterJob {
        std::fs::create_dir_all(log_dir).unwrap();
        ClusterJob(Some(
            Command::new(launcher())
                .args(["2", "--hostfile", hostfile(log_dir, 2).to_str().unwrap()])
                .args(["--log-dir", log_dir.to_str().unwrap()])
                .arg("--")
                .args([BIN, "run", "-c", config.to_str().unwrap(), "-w", "2"])
                .args(["--progress-seconds", "1"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    }

    /// The pids of the job's wrongbook processes (those started with `config`).
    fn processes(config: &Path) -> Vec<u32> {
        let out = Command::new("pgrep")
            .args(["-f", &format!("^{BIN} run -c {} ", config.display())])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Waits up to `limit` for the launcher to end by itself.
    fn wait_end(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.as_mut().unwrap().try_wait().unwrap() {
                self.0 = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the cluster did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ClusterJob {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("pkill")
                .args(["-9", "-P", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// 9,000 generated events for a Kafka job, the first 5,000 produced to a 4-partition topic.
struct KafkaJob {
    generated: Generated,
    expected: BTreeMap<i64, Row>,
    db: TestDatabase,
    job: PathBuf,
    kafka: wrongbook::config::KafkaConfig,
}

/// The broker and the job, or `None` (skip) without the services, except under CI.
fn kafka_job(topic: &str, seed: u64) -> Option<(KafkaBroker, KafkaJob)> {
    let broker = KafkaBroker::start()?;
    TestDatabase::mariadb()?;
    let generated = generate(&GenOptions {
        events: 9_000,
        seed,
        ..GenOptions::default()
    });
    let (_, expected) = reference(&generated.messages, &generated.dims);
    let (db, job) = database(&generated, Some(&broker), topic);
    let kafka = wrongbook::config::KafkaConfig {
        bootstrap_servers: broker.bootstrap.clone(),
        topic: topic.into(),
        ..Default::default()
    };
    wrongbook::source::kafka::ensure_topic(&kafka, topic, 4).unwrap();
    produce_messages(&kafka, &generated.messages[..5_000]).unwrap();
    let job = KafkaJob {
        generated,
        expected,
        db,
        job,
        kafka,
    };
    Some((broker, job))
}

#[test]
fn killing_one_process_and_restarting_both_ends_exact() {
    let Some((_broker, job)) = kafka_job("cluster-kill", 93) else {
        return;
    };
    let KafkaJob {
        generated,
        expected,
        db,
        job,
        kafka,
    } = job;
    let (_, second) = generated.messages.split_at(5_000);

    let logs = db.dir().join("logs-1");
    let cluster = ClusterJob::start(&job, &logs);
    // Let it checkpoint, then kill process 1 while the second half arrives.
    let checkpoints = db.dir().join("checkpoints");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&checkpoints).is_ok_and(|mut d| {
        d.any(|e| {
            e.is_ok_and(|e| {
                e.path().join("MANIFEST-0.json").is_file()
                    && e.path().join("MANIFEST-1.json").is_file()
            })
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "no complete checkpoint of both processes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pids = ClusterJob::processes(&job);
    assert_eq!(pids.len(), 2, "two wrongbook processes: {pids:?}");
    let producer = {
        let kafka = kafka.clone();
        let second = second.to_vec();
        std::thread::spawn(move || produce_messages(&kafka, &second).unwrap())
    };
    std::thread::sleep(Duration::from_millis(700));
    let _ = Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status();
    // The other process loses its peer: the launcher stops it, or the test does.
    let mut cluster = cluster;
    let ended = cluster.wait_end(Duration::from_secs(30));
    assert!(
        ended.is_none_or(|status| !status.success()),
        "a killed job does not end well"
    );
    drop(cluster);
    for pid in ClusterJob::processes(&job) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    producer.join().unwrap();

    // Restart both: they resume from the last complete checkpoint and end exact.
    let cluster = ClusterJob::start(&job, &db.dir().join("logs-2"));
    wait_for_table(
        &db,
        &expected,
        Duration::from_secs(120),
        &db.dir().join("logs-2/process-0.log"),
    );
    assert!(cluster.stop().success());
}

/// A SQLite job for the start-up error tests: config, an events file and a hostfile of
/// `processes` free ports on 127.0.0.1.
fn sqlite_job(processes: usize) -> (TestDatabase, PathBuf, PathBuf, PathBuf) {
    let db = TestDatabase::sqlite();
    let generated = generate(&GenOptions {
        events: 100,
        ..GenOptions::default()
    });
    let mut conn = init_db(&db.config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    let input = db.dir().join("events.jsonl");
    write_jsonl(
        &mut std::fs::File::create(&input).unwrap(),
        &generated.messages,
    )
    .unwrap();
    let config = db.dir().join("job.toml");
    std::fs::write(
        &config,
        format!(
            "[mysql]\nurl = \"{}\"\n[cluster]\nconnect_timeout = \"3s\"\n",
            db.config.mysql.url
        ),
    )
    .unwrap();
    let hosts = hostfile(db.dir(), processes);
    (db, config, input, hosts)
}

fn replay_process(
    config: &Path,
    input: &Path,
    hostfile: &Path,
    processes: usize,
    process: usize,
) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "replay",
            "-c",
            config.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
        .args([
            "--quiet",
            "-w",
            "1",
            "-n",
            &processes.to_string(),
            "-p",
            &process.to_string(),
        ])
        .args(["-h", hostfile.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Kills the child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_missing_peer_is_named_after_the_connect_timeout() {
    let (_db, config, input, hostfile) = sqlite_job(2);
    let started = Instant::now();
    let out = replay_process(&config, &input, &hostfile, 2, 0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let peer = std::fs::read_to_string(&hostfile)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("not reachable: process 1 at {peer}")),
        "{stderr}"
    );
    assert!(stderr.contains("--processes 2"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it gave up after the timeout"
    );
}

#[test]
fn a_duplicate_process_index_is_a_clear_error() {
    let (_db, config, input, hostfile) = sqlite_job(2);
    let _first = Killed(
        replay_process(&config, &input, &hostfile, 2, 0)
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = replay_process(&config, &input, &hostfile, 2, 0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("duplicate --process index"), "{stderr}");
}

#[test]
fn a_mismatched_process_count_is_a_clear_error() {
    let (_db, config, input, hosts3) = sqlite_job(3);
    // Process 0 believes in two processes, process 1 in three: 1 waits for a process 2.
    let hosts2 = hosts3.with_file_name("hosts-2-of-3");
    let lines: Vec<String> = std::fs::read_to_string(&hosts3)
        .unwrap()
        .lines()
        .take(2)
        .map(str::to_owned)
        .collect();
    std::fs::write(&hosts2, lines.join("\n")).unwrap();
    let _first = Killed(
        replay_process(&config, &input, &hosts2, 2, 0)
            .spawn()
            .unwrap(),
    );
    let out = replay_process(&config, &input, &hosts3, 3, 1)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("process 2 at"), "{stderr}");
    assert!(stderr.contains("same hostfile and --processes"), "{stderr}");
}

#[test]
fn a_2x2_checkpoint_restores_into_1x4() {
    let Some((_broker, job)) = kafka_job("cluster-layout", 94) else {
        return;
    };
    let KafkaJob {
        generated,
        expected,
        db,
        job,
        kafka,
    } = job;
    let (_, second) = generated.messages.split_at(5_000);
    let args = ["run", "-c", job.to_str().unwrap(), "--until-caught-up"];
    let output = run_layout(2, 2, &args, &db.dir().join("logs-2x2"));
    assert_eq!(outcome_counts(&output)["all"][3], 5_000);

    produce_messages(&kafka, second).unwrap();
    let output = run_layout(1, 4, &args, &db.dir().join("logs-1x4"));
    assert_eq!(
        outcome_counts(&output)["all"][3],
        second.len() as u64,
        "resumed from the 2×2 checkpoint: only the new events are read\n{output}"
    );
    assert_tables_equal(&db.read_table(WIDE), &expected, "2×2 then 1×4");
}
