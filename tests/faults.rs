//! Faults during a steady stream (SPEC §7): 200,000 events produced at a steady rate while the
//! job is killed with `kill -9` at a dozen random moments and restarted, its MariaDB is stopped
//! and started again, and its broker is restarted. Once caught up the table equals the
//! reference model, and the alerts topic holds each dead letter (by source position) exactly
//! as the model says: none invented, none lost.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::job::{start_job, terminate, wait_for_table, Job};
use common::{read_topic, read_topic_raw, reference, KafkaBroker, PrivateMariaDb, TestDatabase};
use wrongbook::commands::gen::{
    dims_sql, generate, produce_messages, routing_sql, GenOptions, Rng,
};
use wrongbook::commands::init_db::init_db;
use wrongbook::config::Config;

const EVENTS: usize = 200_000;
/// Produced per second: the stream lasts about 40 s.
const RATE: usize = 5_000;

#[test]
fn kills_database_and_broker_restarts_during_a_stream_end_exact() {
    let (Some(mut broker), Some(mut mariadb)) = (KafkaBroker::start(), PrivateMariaDb::start())
    else {
        return;
    };
    // Kept only for its temporary directory.
    let scratch = TestDatabase::sqlite();
    let url = format!("mysql://127.0.0.1:{}/wrongbook", mariadb.port);
    mysql::Conn::new(
        mysql::Opts::from_url(&format!("mysql://root@127.0.0.1:{}/mysql", mariadb.port)).unwrap(),
    )
    .and_then(|mut c| mysql::prelude::Queryable::query_drop(&mut c, "CREATE DATABASE wrongbook"))
    .unwrap();
    let path = scratch.dir().join("job.toml");
    std::fs::write(
        &path,
        format!(
            "workers = 2\n[mysql]\nurl = \"{url}\"\nusername = \"root\"\n\
             [kafka]\nbootstrap_servers = \"{}\"\ntopic = \"faults\"\nalerts_topic = \"faults-alerts\"\n\
             metrics_topic = \"faults-metrics\"\ngroup_id = \"faults-group\"\n\
             [engine]\nepoch_interval = \"100ms\"\n[checkpoint]\ninterval = \"1s\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            broker.bootstrap
        ),
    )
    .unwrap();
    let config = Config::load_with_env(Some(&path), std::iter::empty()).unwrap();
    let generated = generate(&GenOptions {
        events: EVENTS,
        seed: 101,
        ..GenOptions::default()
    });
    let mut conn = init_db(&config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    drop(conn);
    let (model, expected) = reference(&generated.messages, &generated.dims);
    wrongbook::source::kafka::ensure_topic(&config.kafka, "faults", 4).unwrap();
    wrongbook::source::kafka::ensure_topic(&config.kafka, "faults-alerts", 1).unwrap();

    // A steady stream: RATE events a second, in tenths.
    let producer = {
        let kafka = config.kafka.clone();
        let messages = generated.messages.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            for (i, chunk) in messages.chunks(RATE / 10).enumerate() {
                let due = Duration::from_millis(100 * i as u64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                produce_messages(&kafka, chunk).unwrap();
            }
        })
    };

    let log = scratch.dir().join("run.log");
    let mut job: Job = start_job(&path, &log);
    let mut current_log = log.clone();
    let mut rng = Rng::new(7);
    let mut kills = 0;
    for round in 0..14 {
        std::thread::sleep(Duration::from_millis(1_000 + rng.below(2_000) as u64));
        match round {
            4 => {
                // The database goes away for 5 s: the job retries and waits, it does not exit.
                mariadb.down();
                std::thread::sleep(Duration::from_secs(5));
                assert!(
                    job.child().try_wait().unwrap().is_none(),
                    "the job exited while MariaDB was down"
                );
                mariadb.up();
            }
            9 => {
                broker.restart();
                std::thread::sleep(Duration::from_secs(2));
                assert!(
                    job.child().try_wait().unwrap().is_none(),
                    "the job exited while the broker restarted"
                );
            }
            _ => {
                job.child().kill().unwrap();
                job.child().wait().unwrap();
                kills += 1;
                current_log = log.with_extension(format!("{round}.log"));
                job = start_job(&path, &current_log);
            }
        }
    }
    assert!(kills >= 10);
    producer.join().unwrap();
    wait_for_table(
        &scratch_table(&url),
        &expected,
        Duration::from_secs(240),
        &current_log,
    );
    let _ = terminate(job);

    // The job said it was retrying while the database was down.
    let logs: String = std::fs::read_dir(scratch.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("retrying"), "retries were logged");

    // Dead letters: delivered at least once, exactly the model's by position. The model is
    // applied to what the topic holds: the producer retries through the broker's restart, so a
    // batch whose acknowledgement was lost is in the topic twice, and its bad messages are
    // dead letters at both places.
    let events = read_topic_raw(&broker.bootstrap, "faults", EVENTS);
    assert!(events.len() >= EVENTS, "every event was produced");
    let mut held = reference::Model::default();
    let dead: BTreeSet<(i64, i64)> = events
        .iter()
        .filter(|(_, _, payload)| {
            let before = held.dead;
            held.feed(payload);
            held.dead > before
        })
        .map(|(partition, offset, _)| (i64::from(*partition), *offset))
        .collect();
    assert!(
        dead.len() >= model.dead,
        "the topic holds every bad message"
    );
    let alerts = read_topic(&broker.bootstrap, "faults-alerts", dead.len());
    let positions: BTreeSet<(i64, i64)> = alerts
        .iter()
        .filter(|a| a["kind"] == "dead_letter")
        .map(|a| {
            (
                a["source"]["partition"].as_i64().unwrap(),
                a["source"]["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(positions, dead, "each dead letter, none invented");
    eprintln!(
        "{EVENTS} events ({} in the topic), {kills} kills, one database restart, one broker restart: exact; {} dead letters ({} records)",
        events.len(),
        dead.len(),
        alerts.len()
    );
}

/// A [`TestDatabase`] view of the private server's database, to read the table.
fn scratch_table(url: &str) -> TestDatabase {
    TestDatabase::at(url)
}
