//! The Kafka job on librdkafka's in-process mock broker (fast; the real-broker tests use
//! Tansu): generated events (bad ones included) on a multi-partition topic, `run` until caught
//! up, and the table equals the reference model, the alerts topic holds exactly the dead
//! letters with their source positions, and the group's offsets are committed to the end.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_tables_equal, read_topic, reference, TestDatabase};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use wrongbook::commands::gen::{dims_sql, generate, produce_to_kafka, routing_sql, GenOptions};
use wrongbook::commands::init_db::init_db;
use wrongbook::commands::run::{run, RunOptions};

#[test]
fn run_until_caught_up_matches_the_reference_and_alerts_hold_the_dead_letters() {
    let cluster = MockCluster::new(1).unwrap();
    let db = TestDatabase::sqlite();
    let mut config = db.config.clone();
    config.kafka.bootstrap_servers = cluster.bootstrap_servers();
    config.kafka.topic = "events-test".into();
    config.kafka.alerts_topic = "alerts-test".into();
    config.checkpoint.dir = db.dir().join("checkpoints").display().to_string();
    config.metrics.listen = "127.0.0.1:0".into();
    config.checkpoint.interval = wrongbook::config::HumanDuration(Duration::from_millis(300));
    config.engine.epoch_interval = wrongbook::config::HumanDuration(Duration::from_millis(50));
    cluster.create_topic("events-test", 4, 1).unwrap();
    cluster.create_topic("alerts-test", 1, 1).unwrap();
    cluster.create_topic("metrics-test", 1, 1).unwrap();
    config.kafka.metrics_topic = "metrics-test".into();

    let opts = GenOptions {
        events: 8_000,
        seed: 21,
        ..GenOptions::default()
    };
    let generated = generate(&opts);
    let (sent, dims, _) = produce_to_kafka(&config.kafka, &opts, None).unwrap();
    assert_eq!(sent, 8_000);
    let mut conn = init_db(&config, None).unwrap();
    conn.execute_script(&dims_sql(&dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    let (model, expected) = reference(&generated.messages, &generated.dims);

    let options = RunOptions {
        workers: Some(3),
        until_caught_up: true,
        stop: Arc::new(AtomicBool::new(false)),
        progress_interval: Duration::from_secs(60),
        from_scratch: false,
        on_serving: None,
    };
    let summary = run(&config, &options).expect("run");
    assert_eq!(summary.messages, 8_000);
    assert_tables_equal(
        &db.read_table("dwd_wrong_record_wide_delta"),
        &expected,
        "after run",
    );
    assert_eq!(
        summary.outcomes.totals().dead_letter_total() as usize,
        model.dead
    );

    let alerts = read_topic(&config.kafka.bootstrap_servers, "alerts-test", model.dead);
    assert_eq!(alerts.len(), model.dead, "exactly the dead letters");
    let mut positions = BTreeMap::new();
    for alert in &alerts {
        assert_eq!(alert["kind"], "dead_letter");
        assert_eq!(alert["source"]["topic"], "events-test");
        let key = (
            alert["source"]["partition"].as_i64().unwrap(),
            alert["source"]["offset"].as_i64().unwrap(),
        );
        assert!(positions.insert(key, ()).is_none(), "one alert per message");
    }

    // The metrics topic got a snapshot of the job's counters, the last one at the end.
    let snapshots = read_topic(&config.kafka.bootstrap_servers, "metrics-test", 1);
    let last = snapshots.last().expect("a metrics snapshot");
    assert_eq!(last["kind"], "metrics");
    assert_eq!(last["events"], 8_000);
    assert_eq!(
        last["live_records"].as_i64().unwrap() as usize,
        expected.len()
    );
    assert_eq!(last["caught_up"], true);

    // The group's offsets are committed to the end of every partition.
    let consumer: BaseConsumer =
        wrongbook::source::kafka::consumer(&config.kafka, &config.kafka.group_id).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition("events-test", p);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .unwrap();
        let total: i64 = committed
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap_or(0).max(0))
            .sum();
        if total == 8_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed {total} of 8000"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A restart, on another worker count, resumes from the checkpoint taken at the end: it
    // reads nothing again and the table stays exact.
    let again = run(
        &config,
        &RunOptions {
            workers: Some(2),
            ..options.clone()
        },
    )
    .expect("second run");
    assert_eq!(again.messages, 0, "resumed from the final checkpoint");
    assert_tables_equal(
        &db.read_table("dwd_wrong_record_wide_delta"),
        &expected,
        "after a restart",
    );

    // From scratch, the state is rebuilt from the whole topic, with the same result.
    let rebuilt = run(
        &config,
        &RunOptions {
            workers: Some(1),
            from_scratch: true,
            ..options
        },
    )
    .expect("third run");
    assert_eq!(rebuilt.messages, 8_000);
    assert_tables_equal(
        &db.read_table("dwd_wrong_record_wide_delta"),
        &expected,
        "after a rebuild",
    );
}
