//! `wrongbook run` against a real Kafka-protocol broker (Tansu) and MariaDB, as a child
//! process the way an operator runs it: produce generated events (bad ones included) to a
//! multi-partition topic, run until the table equals the reference model, stop with SIGTERM
//! (exit 0); the alerts topic holds exactly the dead letters. And `kill -9` at random moments
//! while events are being produced, restart, and the table still ends exact. And `replay
//! --from/--to` of a time range writes exactly the rows its events touch.

mod common;

use std::time::{Duration, Instant};

use common::job::{start_job, terminate, wait_for_table};
use common::{assert_tables_equal, read_topic, reference, KafkaBroker, TestDatabase};
use wrongbook::commands::gen::{
    dims_sql, generate, produce_to_kafka, routing_sql, GenOptions, Rng,
};
use wrongbook::commands::init_db::init_db;
use wrongbook::config::Config;

/// The services, or `None` to skip (never under CI).
fn services() -> Option<(KafkaBroker, TestDatabase)> {
    let broker = KafkaBroker::start()?;
    let db = TestDatabase::mariadb()?;
    Some((broker, db))
}

/// A config file for the job, and the config itself.
fn job_config(
    db: &TestDatabase,
    broker: &KafkaBroker,
    topic: &str,
) -> (Config, std::path::PathBuf) {
    let mut config = db.config.clone();
    config.kafka.bootstrap_servers = broker.bootstrap.clone();
    config.kafka.topic = topic.into();
    config.kafka.alerts_topic = format!("{topic}-alerts");
    config.kafka.group_id = format!("{topic}-group");
    let path = db.dir().join("job.toml");
    std::fs::write(
        &path,
        format!(
            "workers = 2\n[mysql]\nurl = \"{}\"\nusername = \"root\"\n[kafka]\nbootstrap_servers = \"{}\"\ntopic = \"{}\"\nalerts_topic = \"{}\"\ngroup_id = \"{}\"\n[engine]\nepoch_interval = \"100ms\"\n[checkpoint]\ninterval = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            config.mysql.url, config.kafka.bootstrap_servers, config.kafka.topic, config.kafka.alerts_topic, config.kafka.group_id
        ),
    )
    .unwrap();
    for t in [&config.kafka.topic, &config.kafka.alerts_topic] {
        wrongbook::source::kafka::ensure_topic(
            &config.kafka,
            t,
            if *t == config.kafka.topic { 4 } else { 1 },
        )
        .unwrap();
    }
    (config, path)
}

#[test]
fn run_keeps_the_table_exact_and_stops_cleanly_on_sigterm() {
    let Some((broker, db)) = services() else {
        return;
    };
    let (config, config_path) = job_config(&db, &broker, "events-run");
    let opts = GenOptions {
        events: 12_000,
        seed: 31,
        ..GenOptions::default()
    };
    let generated = generate(&opts);
    let (sent, dims, _) = produce_to_kafka(&config.kafka, &opts, None).unwrap();
    assert_eq!(sent, 12_000);
    let mut conn = init_db(&config, None).unwrap();
    conn.execute_script(&dims_sql(&dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    let (model, expected) = reference(&generated.messages, &generated.dims);

    let log = db.dir().join("run.log");
    let job = start_job(&config_path, &log);
    wait_for_table(&db, &expected, Duration::from_secs(120), &log);
    let status = terminate(job);
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let alerts = read_topic(
        &config.kafka.bootstrap_servers,
        &config.kafka.alerts_topic,
        model.dead,
    );
    assert_eq!(
        alerts.len(),
        model.dead,
        "the alerts topic holds exactly the dead letters"
    );
    assert!(alerts
        .iter()
        .all(|a| a["kind"] == "dead_letter" && a["source"]["topic"] == "events-run"));
}

#[test]
fn kill_9_at_random_moments_and_restart_ends_exact() {
    let Some((broker, db)) = services() else {
        return;
    };
    let (config, config_path) = job_config(&db, &broker, "events-crash");
    let opts = GenOptions {
        events: 9_000,
        seed: 41,
        ..GenOptions::default()
    };
    let generated = generate(&opts);
    let mut conn = init_db(&config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    let (_, expected) = reference(&generated.messages, &generated.dims);

    // Events arrive while the job runs and is killed: a producer thread at a steady rate.
    let producer = {
        let kafka = config.kafka.clone();
        std::thread::spawn(move || produce_to_kafka(&kafka, &opts, Some(3_000)).map(|r| r.0))
    };
    let log = db.dir().join("crash.log");
    // How far the newest complete checkpoint has read: the sum of its next offsets.
    let checkpointed = || -> i64 {
        let Ok(entries) = std::fs::read_dir(db.dir().join("checkpoints")) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.path().join("MANIFEST-0.json").is_file())
            .map(|e| {
                std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .filter(|f| f.file_name().to_string_lossy().ends_with(".offsets.json"))
                    .map(|f| {
                        let part: serde_json::Value =
                            serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap();
                        part["offsets"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|o| o[1].as_i64().unwrap())
                            .sum::<i64>()
                    })
                    .sum::<i64>()
            })
            .max()
            .unwrap_or(0)
    };
    let mut rng = Rng::new(5);
    for kill in 0..3 {
        let before = checkpointed();
        let mut job = start_job(&config_path, &log);
        // Let it checkpoint progress at least once, then kill it at a random moment.
        let deadline = Instant::now() + Duration::from_secs(60);
        while checkpointed() <= before && before < 9_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1_000) as u64));
        job.child().kill().expect("kill -9");
        job.child().wait().unwrap();
        eprintln!(
            "killed the job ({}) after a checkpoint at {} of 9000 events",
            kill + 1,
            checkpointed()
        );
    }
    assert!(
        checkpointed() > 0,
        "the job checkpointed its progress before it was killed"
    );
    assert_eq!(producer.join().unwrap().unwrap(), 9_000);
    let job = start_job(&config_path, &log);
    wait_for_table(&db, &expected, Duration::from_secs(120), &log);
    assert!(terminate(job).success());
    // The last restart resumed from a checkpoint: it did not re-read the whole topic.
    let summary = std::fs::read_to_string(log.with_extension("out")).unwrap();
    let processed: u64 = summary
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary: {summary}"));
    assert!(processed < 9_000, "re-read {processed} of 9000 events");
}

fn produce(bootstrap: &str, topic: &str, messages: &[Vec<u8>]) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("sticky.partitioning.linger.ms", "0")
            .create()
            .unwrap();
    for message in messages {
        producer
            .send(BaseRecord::<(), [u8]>::to(topic).payload(message))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn replay_of_a_range_writes_exactly_the_rows_its_events_touch() {
    use wrongbook::commands::replay::{replay_topic, TimePoint, TopicReplayOptions};

    let Some(broker) = KafkaBroker::start() else {
        return;
    };
    let db = TestDatabase::sqlite();
    let mut config = db.config.clone();
    config.kafka.bootstrap_servers = broker.bootstrap.clone();
    config.kafka.topic = "events-range".into();
    wrongbook::source::kafka::ensure_topic(&config.kafka, "events-range", 3).unwrap();
    let generated = generate(&GenOptions {
        events: 6_000,
        seed: 23,
        ..GenOptions::default()
    });
    let (a, rest) = generated.messages.split_at(3_000);
    let (b, c) = rest.split_at(2_000);
    produce(&config.kafka.bootstrap_servers, "events-range", a);
    std::thread::sleep(Duration::from_millis(100));
    let from = now_ms();
    std::thread::sleep(Duration::from_millis(100));
    produce(&config.kafka.bootstrap_servers, "events-range", b);
    std::thread::sleep(Duration::from_millis(100));
    let to = now_ms();
    std::thread::sleep(Duration::from_millis(100));
    produce(&config.kafka.bootstrap_servers, "events-range", c);

    let mut conn = init_db(&config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();

    // The rows of the records B touches, as A and B compute them.
    let (_, upto_b) = reference(&[a, b].concat(), &generated.dims);
    let mut model = common::reference::Model::default();
    let touched: std::collections::BTreeSet<i64> = b
        .iter()
        .filter_map(|m| model.feed(m))
        .map(|w| common::reference::reference_id(&w))
        .collect();
    let expected: std::collections::BTreeMap<i64, common::Row> = upto_b
        .into_iter()
        .filter(|(id, _)| touched.contains(id))
        .collect();
    assert!(
        expected.len() > 500,
        "the range touches many rows: {}",
        expected.len()
    );

    let summary = replay_topic(
        &config,
        &TopicReplayOptions {
            from: TimePoint::At(from),
            to: TimePoint::At(to),
            workers: Some(2),
            table: None,
            dead_letters: db.dir().join("range.dead-letters.jsonl"),
            progress: false,
        },
    )
    .expect("replay --from --to");
    assert_tables_equal(
        &db.read_table("dwd_wrong_record_wide_delta"),
        &expected,
        "after the range replay",
    );
    assert_eq!(
        summary.outcomes.totals().total(),
        2_000,
        "outcomes count the range only"
    );
    assert_eq!(summary.messages, 5_000, "read from the start to --to");

    // The live group's offsets did not move.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        wrongbook::source::kafka::consumer(&config.kafka, &config.kafka.group_id).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition("events-range", p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .unwrap();
    assert!(committed
        .elements()
        .iter()
        .all(|e| e.offset().to_raw().unwrap_or(-1) < 0));
}
