//! Test support: the reference model, running the engine in memory, and throwaway databases
//! (a MariaDB database per test on 127.0.0.1:3306, or an SQLite file).
#![allow(dead_code, unused_imports)]

pub mod job;
pub mod reference;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wrongbook::config::{Config, EngineConfig};
use wrongbook::dataflow::route::{RouteTable, Routing};
use wrongbook::dataflow::wide::WideRow;
use wrongbook::db::{Db, SqlValue};
use wrongbook::engine::{run_pipeline, Pipeline, RunSummary};
use wrongbook::sink::dead_letters::{DeadLetter, DeadLetterMemory};
use wrongbook::sink::memory::MemoryTable;
use wrongbook::sink::{SinkStats, SinkTarget};
use wrongbook::source::dims::DimSnapshot;
use wrongbook::source::file::{BoundedInput, SourceProgress};
use wrongbook::spec::Spec;

pub use reference::{reference, Row};

/// A wide row of the engine as the model's comparable row.
pub fn row_of(row: &WideRow) -> Row {
    let text = |v: &Option<compact_str::CompactString>| v.as_ref().map(|v| v.to_string());
    vec![
        Some(row.id.to_string()),
        Some(row.wrong_id.to_string()),
        Some(row.user_id.to_string()),
        text(&row.subject),
        text(&row.subject_name),
        Some(row.question_id.to_string()),
        text(&row.question),
        text(&row.pattern_id),
        text(&row.pattern_name),
        text(&row.teach_type_id),
        text(&row.teach_type_name),
        Some(row.collect_time.to_string()),
        text(&row.fix_id),
        row.fix_time.map(|t| t.to_string()),
        row.fix_result.map(|r| r.to_string()),
        text(&row.fix_result_desc),
        Some(row.event_id.to_string()),
        Some(row.event_type.to_string()),
    ]
}

/// How to run the engine in memory.
pub struct MemoryRun {
    pub workers: usize,
    pub chunk_messages: usize,
    pub epoch_max_messages: usize,
    pub dims: DimSnapshot,
    pub dims_after: Option<DimSnapshot>,
    pub table: MemoryTable,
}

impl MemoryRun {
    pub fn new(workers: usize, dims: DimSnapshot) -> MemoryRun {
        MemoryRun {
            workers,
            chunk_messages: 64,
            epoch_max_messages: 256,
            dims,
            dims_after: None,
            table: MemoryTable::default(),
        }
    }

    /// Runs the engine over `messages` with the generator's routing; returns the summary, the
    /// table and the dead letters.
    pub fn run(self, messages: Vec<Vec<u8>>) -> (RunSummary, BTreeMap<i64, Row>, Vec<DeadLetter>) {
        let spec = Spec::builtin();
        let routes = RouteTable::build(wrongbook::commands::gen::routing_rows(), &spec);
        let dead_letters = Arc::new(DeadLetterMemory::default());
        let later = self.dims_after.clone();
        let pipeline = Pipeline {
            spec: Arc::new(spec),
            routing: Routing::fixed(routes),
            engine: EngineConfig {
                chunk_messages: self.chunk_messages,
                epoch_max_messages: self.epoch_max_messages,
                ..EngineConfig::default()
            },
            layout: wrongbook::cluster::Layout::single(self.workers),
            input: wrongbook::engine::Input::Bounded(BoundedInput::Messages(Arc::new(messages))),
            dims: self.dims,
            dims_after: later.map(|d| Box::new(move || Ok(d)) as wrongbook::engine::LaterDims),
            dim_updates: None,
            dim_stats: Default::default(),
            sink: SinkTarget::Memory(self.table.clone()),
            reconcile: true,
            dead_letters: dead_letters.clone(),
            source_progress: Arc::new(SourceProgress::default()),
            sink_stats: Arc::new(SinkStats::default()),
            dataflow_stats: Default::default(),
            caught_up_workers: Default::default(),
        };
        let summary = run_pipeline(pipeline).expect("the engine runs");
        let table = self
            .table
            .snapshot()
            .values()
            .map(|row| (row.id as i64, row_of(row)))
            .collect();
        (summary, table, dead_letters.letters())
    }
}

/// Whether tests must fail rather than skip when a service is missing.
pub fn services_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// A database that lives as long as the test.
pub struct TestDatabase {
    pub config: Config,
    mysql_name: Option<String>,
    /// Whether the database is the test's own, dropped at the end.
    owned: bool,
    _dir: tempfile::TempDir,
}

impl TestDatabase {
    /// A fresh MariaDB database on 127.0.0.1:3306 (root, empty password); `None` (skip) when
    /// MariaDB is not running, except under CI, where that fails the test.
    pub fn mariadb() -> Option<TestDatabase> {
        let admin_url = "mysql://root@127.0.0.1:3306/mysql";
        let opts = mysql::Opts::from_url(admin_url).expect("a valid url");
        let mut admin = match mysql::Conn::new(opts) {
            Ok(conn) => conn,
            Err(e) => {
                assert!(
                    !services_required(),
                    "MariaDB at 127.0.0.1:3306 is required under CI: {e}"
                );
                eprintln!("skipping: MariaDB at 127.0.0.1:3306 is not reachable: {e}");
                return None;
            }
        };
        let name = format!(
            "wb_test_{}_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        use mysql::prelude::Queryable;
        admin
            .query_drop(format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.mysql.url = format!("mysql://127.0.0.1:3306/{name}");
        config.mysql.username = "root".into();
        Some(TestDatabase {
            config,
            mysql_name: Some(name),
            owned: true,
            _dir: dir,
        })
    }

    /// A fresh SQLite file in a temporary directory.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.mysql.url = format!("sqlite://{}", dir.path().join("wb.db").display());
        TestDatabase {
            config,
            mysql_name: None,
            owned: true,
            _dir: dir,
        }
    }

    /// The MySQL database at `url`, which the test does not own (it is not dropped).
    pub fn at(url: &str) -> TestDatabase {
        let mut config = Config::default();
        config.mysql.url = url.to_owned();
        config.mysql.username = "root".into();
        TestDatabase {
            config,
            mysql_name: Some(url.rsplit('/').next().unwrap_or_default().to_owned()),
            owned: false,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn connect(&self) -> Db {
        self.config
            .database()
            .connect()
            .expect("connect to the test database")
    }

    pub fn is_sqlite(&self) -> bool {
        self.mysql_name.is_none()
    }

    /// The wide table `table` as comparable rows; also checks every row has a process_time.
    pub fn read_table(&self, table: &str) -> BTreeMap<i64, Row> {
        let epoch = |col: &str| {
            if self.is_sqlite() {
                format!("CAST(strftime('%s', {col}) AS INTEGER)")
            } else {
                format!("UNIX_TIMESTAMP({col})")
            }
        };
        let sql = format!(
            "SELECT id, wrong_id, user_id, subject, subject_name, question_id, question, pattern_id, \
             pattern_name, teach_type_id, teach_type_name, {}, fix_id, {}, fix_result, \
             fix_result_desc, event_id, event_type, process_time FROM {table}",
            epoch("collect_time"),
            epoch("fix_time")
        );
        let rows = self.connect().query(&sql).expect("read the wide table");
        rows.rows
            .into_iter()
            .map(|mut row| {
                let process_time = row.pop().unwrap();
                assert_ne!(process_time, SqlValue::Null, "every row has a process_time");
                let row: Row = row.into_iter().map(SqlValue::into_text).collect();
                let id = row[0].as_ref().unwrap().parse::<i64>().unwrap();
                (id, row)
            })
            .collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.mysql_name.as_ref().filter(|_| self.owned) {
            if let Ok(mut admin) = mysql::Conn::new(
                mysql::Opts::from_url("mysql://root@127.0.0.1:3306/mysql").unwrap(),
            ) {
                use mysql::prelude::Queryable;
                let _ = admin.query_drop(format!("DROP DATABASE IF EXISTS {name}"));
            }
        }
    }
}

/// Compares two tables and says which ids differ and how.
pub fn assert_tables_equal(actual: &BTreeMap<i64, Row>, expected: &BTreeMap<i64, Row>, what: &str) {
    if actual == expected {
        return;
    }
    let mut report = Vec::new();
    for (id, row) in expected {
        match actual.get(id) {
            None => report.push(format!("missing id {id}: {row:?}")),
            Some(a) if a != row => {
                report.push(format!("id {id}:\n  got      {a:?}\n  expected {row:?}"))
            }
            _ => {}
        }
    }
    for (id, row) in actual {
        if !expected.contains_key(id) {
            report.push(format!("unexpected id {id}: {row:?}"));
        }
    }
    let shown: Vec<String> = report.iter().take(10).cloned().collect();
    panic!(
        "{what}: {} rows vs {} expected, {} differences:\n{}",
        actual.len(),
        expected.len(),
        report.len(),
        shown.join("\n")
    );
}

/// A Tansu broker on a free 127.0.0.1 port with SQLite storage in a temporary directory,
/// started with `scripts/kafka-broker` and killed on drop.
pub struct KafkaBroker {
    pub bootstrap: String,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl KafkaBroker {
    /// `None` (skip) when Tansu is not installed, except under CI, where that fails the test.
    pub fn start() -> Option<KafkaBroker> {
        let dir = tempfile::tempdir().unwrap();
        // Below the ephemeral range: no outgoing connection can take it before the server binds.
        let port = job::listen_ports(1)[0];
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker");
        let out = std::process::Command::new(script)
            .args(["start", &port.to_string(), dir.path().to_str().unwrap()])
            .output()
            .expect("run scripts/kafka-broker");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!services_required(), "Tansu is required under CI: {why}");
            eprintln!("skipping: cannot start Tansu: {why}");
            return None;
        }
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the broker's pid");
        Some(KafkaBroker {
            bootstrap: format!("127.0.0.1:{port}"),
            pid,
            _dir: dir,
        })
    }
}

impl KafkaBroker {
    /// Stops the broker (`kill -9`) and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let port = self.bootstrap.rsplit(':').next().unwrap().to_owned();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker");
        let out = std::process::Command::new(script)
            .args(["start", &port, self._dir.path().to_str().unwrap()])
            .output()
            .expect("run scripts/kafka-broker");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    }
}

/// A MariaDB server of the test's own (its data directory and port), that the test may stop and
/// start; root without a password over TCP. `None` (skip) when MariaDB is not installed, except
/// under CI.
pub struct PrivateMariaDb {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateMariaDb {
    pub fn start() -> Option<PrivateMariaDb> {
        if !Path::new("/usr/sbin/mariadbd").exists() {
            assert!(!services_required(), "MariaDB is required under CI");
            eprintln!("skipping: /usr/sbin/mariadbd is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("mariadb-install-db");
        assert!(status.success());
        // Below the ephemeral range: no outgoing connection can take it before the server binds.
        let port = job::listen_ports(1)[0];
        let mut db = PrivateMariaDb {
            port,
            dir,
            child: None,
        };
        db.up();
        Some(db)
    }

    /// Starts the server and waits until it answers.
    pub fn up(&mut self) {
        let dir = self.dir.path();
        self.child = Some(
            std::process::Command::new("/usr/sbin/mariadbd")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .arg(format!("--port={}", self.port))
                .arg(format!("--socket={}", dir.join("sock").display()))
                .args(["--bind-address=127.0.0.1", "--user=root", "--skip-log-bin"])
                .arg("--innodb-buffer-pool-size=128M")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
                .spawn()
                .expect("start mariadbd"),
        );
        let url = format!("mysql://root@127.0.0.1:{}/mysql", self.port);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the private MariaDB did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM, as an operator would) and waits until it is gone.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
    }
}

/// Reads up to `expected` JSON records from `topic` (from the start), waiting at most 60 s,
/// then half a second more for any record beyond them.
pub fn read_topic(bootstrap: &str, topic: &str, expected: usize) -> Vec<serde_json::Value> {
    read_topic_raw(bootstrap, topic, expected)
        .into_iter()
        .map(|(_, _, payload)| serde_json::from_slice(&payload).unwrap())
        .collect()
}

/// Every record of `topic` as (partition, offset, payload bytes), waiting as [`read_topic`]
/// does.
pub fn read_topic_raw(bootstrap: &str, topic: &str, expected: usize) -> Vec<(i32, i64, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!(
                "test-reader-{}-{}",
                std::process::id(),
                NEXT_DB.fetch_add(1, Ordering::Relaxed)
            ),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut extra_until = None;
    loop {
        let now = std::time::Instant::now();
        if records.len() >= expected && extra_until.is_none() {
            extra_until = Some(now + std::time::Duration::from_millis(500));
        }
        if now > deadline || extra_until.is_some_and(|t| now > t) {
            return records;
        }
        if let Some(Ok(message)) = consumer.poll(std::time::Duration::from_millis(100)) {
            let payload = message.payload().unwrap_or(b"null").to_vec();
            records.push((message.partition(), message.offset(), payload));
        }
    }
}
