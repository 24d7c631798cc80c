//! Continuous operation (SPEC §3, §5, §8) against Tansu and MariaDB, with `wrongbook run` as a
//! child process: routing changes applied as-of the moment they are seen (and held for a
//! restart when not hot-deployable), a new event type deployed by spec and routing row alone,
//! dimension changes corrected after the next refresh, `/metrics` matching what was processed,
//! and a stalled sink raising the latency alert once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::job::{http_get, job_config, start_job, terminate, wait_for_table, Job};
use common::reference::Model;
use common::{read_topic, KafkaBroker, Row, TestDatabase};
use serde_json::{json, Value};
use wrongbook::commands::gen::{dims_sql, generate, produce_messages, GenOptions};
use wrongbook::commands::init_db::init_db;
use wrongbook::source::dims::DimSnapshot;

const WIDE: &str = "dwd_wrong_record_wide_delta";

fn services() -> Option<(KafkaBroker, TestDatabase)> {
    let broker = KafkaBroker::start()?;
    let db = TestDatabase::mariadb()?;
    Some((broker, db))
}

/// Routing rows: add on; fix on but not hot-deployable; delete off; the generator's disabled
/// `wrongbook_review` and its `wrongbook_share` with a processor that does not exist.
const ROUTING: &str = "DELETE FROM flink_routing_config;
INSERT INTO flink_routing_config (id, event_type, processor_class, enabled, hot_deployable, priority, version) VALUES
 (1, 'wrongbook_add', 'com.flink.realtime.processor.impl.WrongbookAddProcessor', 1, 1, 100, '1.0'),
 (2, 'wrongbook_fix', 'com.flink.realtime.processor.impl.WrongbookFixProcessor', 1, 0, 100, '1.0'),
 (3, 'wrongbook_delete', 'wrongbook_delete', 0, 1, 100, '1.0'),
 (5, 'wrongbook_review', 'wrongbook_add', 0, 1, 100, '1.0'),
 (6, 'wrongbook_share', 'com.flink.realtime.processor.impl.WrongbookShareProcessor', 1, 1, 100, '1.0');";

/// Scraped samples: (name, labels) → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// The scraped metrics, parsed as Prometheus text: (name, labels) → value.
fn scrape(addr: &str) -> Option<Samples> {
    let (status, body) = http_get(addr, "/metrics")?;
    assert_eq!(status, 200, "{body}");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("/metrics parses as Prometheus text");
    let mut samples = BTreeMap::new();
    for sample in parsed.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let labels: BTreeMap<String, String> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        samples.insert((sample.metric, labels), value);
    }
    Some(samples)
}

/// The sum of metric `name` over the samples whose labels include `labels`.
fn metric(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Waits until `check` holds on a scrape, or fails after `limit` with the last scrape.
fn wait_for_metrics(addr: &str, limit: Duration, what: &str, check: impl Fn(&Samples) -> bool) {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(samples) = scrape(addr) {
            if check(&samples) {
                return;
            }
            last = Some(samples);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}; last scrape: {last:#?}");
}

fn event_type(message: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(message).ok()?;
    value["type"].as_str().map(str::to_owned)
}

/// `count` review results for live adds of `messages`, as sent and as the equivalent fix the
/// reference model understands.
fn review_results(messages: &[Vec<u8>], count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let adds: Vec<Value> = messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(m).ok())
        .filter(|v| v["type"] == "wrongbook_add" && v["payload"]["wrongRecordId"].is_string())
        .collect();
    let mut seen = BTreeSet::new();
    adds.iter()
        .filter(|add| seen.insert(add["payload"]["wrongRecordId"].to_string()))
        .take(count)
        .enumerate()
        .map(|(i, add)| {
            let p = &add["payload"];
            let envelope = |ty: &str, payload: Value| {
                serde_json::to_vec(&json!({
                    "eventId": format!("review-{i}"), "type": ty, "domain": "wrongbook",
                    "timestamp": 1_800_000_000_000i64 + i as i64, "payload": payload,
                }))
                .unwrap()
            };
            let sent = envelope(
                "wrongbook_review_result",
                json!({ "userId": p["userId"], "questionId": p["questionId"],
                        "recordId": p["wrongRecordId"], "reviewedAt": 1_800_000_000_000i64,
                        "verdict": "correct", "reviewId": format!("rv-{i}") }),
            );
            let modelled = envelope(
                "wrongbook_fix",
                json!({ "userId": p["userId"], "questionId": p["questionId"],
                        "wrongRecordId": p["wrongRecordId"], "fixTime": 1_800_000_000_000i64,
                        "fixResult": "correct", "fixId": format!("rv-{i}") }),
            );
            (sent, modelled)
        })
        .collect()
}

/// The model's rows, with the event type of review results restored (the model saw fixes).
fn with_review_types(mut table: BTreeMap<i64, Row>, reviews: usize) -> BTreeMap<i64, Row> {
    let ids: BTreeSet<String> = (0..reviews).map(|i| format!("review-{i}")).collect();
    for row in table.values_mut() {
        if row[16].as_ref().is_some_and(|id| ids.contains(id)) {
            row[17] = Some("wrongbook_review_result".into());
        }
    }
    table
}

#[test]
fn routing_and_dimension_changes_apply_while_running_and_metrics_match() {
    let Some((broker, db)) = services() else {
        return;
    };
    let (config, config_path, metrics) = job_config(&db, &broker, "events-ops", "");
    let generated = generate(&GenOptions {
        events: 6_000,
        seed: 51,
        ..GenOptions::default()
    });
    let mut conn = init_db(&config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(ROUTING).unwrap();

    // Phase A: deletes are disabled, so they are skipped.
    let (phase_a, phase_b) = generated.messages.split_at(3_000);
    let mut model = Model::default();
    for m in phase_a {
        if event_type(m).as_deref() != Some("wrongbook_delete") {
            model.feed(m);
        }
    }
    produce_messages(&config.kafka, phase_a).unwrap();
    let log = db.dir().join("run.log");
    let job = start_job(&config_path, &log);
    wait_for_table(
        &db,
        &model.table(&generated.dims),
        Duration::from_secs(120),
        &log,
    );

    // Routing changes: deletes on (applies now), fixes off (not hot-deployable: waits for a
    // restart), and a new event type from the spec's example gets its row.
    // One transaction: the watcher sees all three changes at once, as one new version.
    conn.execute_script(
        "START TRANSACTION;
         UPDATE flink_routing_config SET enabled = 1 WHERE id = 3;
         UPDATE flink_routing_config SET enabled = 0 WHERE id = 2;
         INSERT INTO flink_routing_config (id, event_type, processor_class, enabled, hot_deployable, priority, version)
           VALUES (7, 'wrongbook_review_result', 'wrongbook_review_result', 1, 1, 100, '1.0');
         COMMIT;",
    )
    .unwrap();
    wait_for_metrics(
        &metrics,
        Duration::from_secs(30),
        "routing version 2",
        |s| metric(s, "wrongbook_routing_version", &[]) == 2.0,
    );

    // Phase B: everything, with the fixes still on and review results as fixes.
    let reviews = review_results(phase_a, 25);
    let mut phase_b: Vec<Vec<u8>> = phase_b.to_vec();
    phase_b.extend(reviews.iter().map(|(sent, _)| sent.clone()));
    for m in &phase_b {
        if event_type(m).as_deref() != Some("wrongbook_review_result") {
            model.feed(m);
        }
    }
    for (_, modelled) in &reviews {
        model.feed(modelled);
    }
    produce_messages(&config.kafka, &phase_b).unwrap();
    let expected = with_review_types(model.table(&generated.dims), reviews.len());
    assert!(
        expected
            .values()
            .any(|r| r[17].as_deref() == Some("wrongbook_review_result")),
        "some review results are the latest event of their row"
    );
    wait_for_table(&db, &expected, Duration::from_secs(120), &log);

    // The metrics count what was processed.
    let produced = (phase_a.len() + phase_b.len()) as f64;
    wait_for_metrics(
        &metrics,
        Duration::from_secs(30),
        "all events counted",
        |s| metric(s, "wrongbook_events_total", &[]) == produced,
    );
    let samples = scrape(&metrics).unwrap();
    assert_eq!(
        metric(
            &samples,
            "wrongbook_events_total",
            &[("outcome", "accepted")]
        ),
        model.accepted as f64
    );
    assert_eq!(
        metric(
            &samples,
            "wrongbook_events_total",
            &[
                ("event_type", "wrongbook_review_result"),
                ("outcome", "accepted")
            ]
        ),
        reviews.len() as f64
    );
    assert_eq!(
        metric(&samples, "wrongbook_source_messages_total", &[]),
        produced
    );
    assert_eq!(
        metric(&samples, "wrongbook_state_records", &[]),
        expected.len() as f64
    );
    assert!(metric(&samples, "wrongbook_rows_upserted_total", &[]) >= expected.len() as f64);
    assert!(metric(&samples, "wrongbook_end_to_end_latency_seconds_count", &[]) > 0.0);
    assert!(
        metric(
            &samples,
            "wrongbook_dim_rows",
            &[("table", "tower_pattern")]
        ) > 0.0
    );

    // A dimension change: rename a pattern, move a teaching type to another chapter.
    let moved = generated.dims.teaching_types.iter().next().unwrap().id;
    conn.execute_script(&format!(
        "UPDATE tower_pattern SET name = CONCAT(name, ' (renamed)') WHERE id = 'pattern_0';
         UPDATE tower_teaching_type SET chapter_id = 'chapter_moved' WHERE id = {moved};"
    ))
    .unwrap();
    let new_dims = DimSnapshot::read(&mut conn, &config.load_spec().unwrap().dimensions).unwrap();
    let corrected = with_review_types(model.table(&new_dims), reviews.len());
    let affected = expected
        .iter()
        .filter(|(id, row)| corrected.get(id) != Some(row))
        .count();
    assert!(affected > 0, "the change touches some rows");
    let upserted_before = metric(&samples, "wrongbook_rows_upserted_total", &[]);
    wait_for_table(&db, &corrected, Duration::from_secs(60), &log);
    wait_for_metrics(&metrics, Duration::from_secs(30), "the correction", |s| {
        metric(s, "wrongbook_dim_last_correction_rows", &[]) > 0.0
    });
    let samples = scrape(&metrics).unwrap();
    assert_eq!(
        metric(&samples, "wrongbook_rows_upserted_total", &[]) - upserted_before,
        affected as f64,
        "exactly the affected rows are rewritten"
    );

    // A new row in the example lookup table fills its columns in exactly the rows of its
    // question, after the next refresh.
    let question = corrected.values().next().unwrap()[5].clone().unwrap();
    let of_question = corrected
        .values()
        .filter(|row| row[5].as_deref() == Some(question.as_str()))
        .count();
    let upserted_before = metric(&samples, "wrongbook_rows_upserted_total", &[]);
    conn.execute_script(&format!(
        "INSERT INTO question_bank VALUES ('{question}', 'hard', 'fractions')"
    ))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let filled = conn
            .query(&format!(
                "SELECT COUNT(*) FROM {WIDE} WHERE question_difficulty = 'hard' AND question_id = '{question}'"
            ))
            .unwrap()
            .rows[0][0]
            .to_int()
            .unwrap()
            .unwrap();
        if filled as usize == of_question {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lookup columns were not filled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for_metrics(
        &metrics,
        Duration::from_secs(10),
        "the lookup correction",
        |s| metric(s, "wrongbook_rows_upserted_total", &[]) - upserted_before == of_question as f64,
    );

    // A restart applies the held fix change: later fixes are skipped. Deletes of phase A stay
    // skipped (as-of), and everything before stays as it was.
    assert!(terminate(job).success());
    let job = start_job(&config_path, &log.with_extension("2.log"));
    // The restart applies the held change to events that enter the topic from then on.
    wait_for_metrics(
        &metrics,
        Duration::from_secs(60),
        "routing version 3",
        |s| metric(s, "wrongbook_routing_version", &[]) == 3.0,
    );
    let late_fixes: Vec<Vec<u8>> = review_results(phase_a, 10)
        .into_iter()
        .map(|(_, fix)| {
            let mut v: Value = serde_json::from_slice(&fix).unwrap();
            v["eventId"] = json!(format!("late-{}", v["eventId"].as_str().unwrap()));
            v["payload"]["fixTime"] = json!(1_900_000_000_000i64);
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    produce_messages(&config.kafka, &late_fixes).unwrap();
    wait_for_metrics(
        &metrics,
        Duration::from_secs(60),
        "late fixes skipped",
        |s| {
            metric(
                s,
                "wrongbook_events_total",
                &[
                    ("event_type", "wrongbook_fix"),
                    ("outcome", "skipped_disabled"),
                ],
            ) >= late_fixes.len() as f64
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    common::assert_tables_equal(&db.read_table(WIDE), &corrected, "after the restart");
    assert!(terminate(job).success());

    // Routing and dimension changes are info records on the alerts topic.
    let alerts = read_topic(
        &config.kafka.bootstrap_servers,
        &config.kafka.alerts_topic,
        1,
    );
    let infos: Vec<&Value> = alerts.iter().filter(|a| a["kind"] == "info").collect();
    assert!(
        infos.iter().any(|a| a["reason"] == "routing_changed"),
        "{infos:?}"
    );
    assert!(
        infos.iter().any(|a| a["reason"] == "dimension_changed"),
        "{infos:?}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("applies at the next restart"),
        "{log_text}"
    );
}

#[test]
fn a_stalled_sink_raises_the_latency_alert_once() {
    let Some((broker, db)) = services() else {
        return;
    };
    let (config, config_path, metrics) = job_config(
        &db,
        &broker,
        "events-slow",
        "latency_critical = \"1s\"\nerror_rate_warning = 1.0\n",
    );
    let generated = generate(&GenOptions {
        events: 2_000,
        seed: 61,
        bad_share: 0.0,
        ..GenOptions::default()
    });
    let mut conn = init_db(&config, None).unwrap();
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(ROUTING).unwrap();
    // As the reference model routes: deletes on.
    conn.execute_script("UPDATE flink_routing_config SET enabled = 1 WHERE id = 3")
        .unwrap();
    let (first, second) = generated.messages.split_at(1_000);
    produce_messages(&config.kafka, first).unwrap();
    let log = db.dir().join("run.log");
    let job: Job = start_job(&config_path, &log);
    let mut model = Model::default();
    for m in generated.messages.iter() {
        model.feed(m);
    }
    wait_for_metrics(&metrics, Duration::from_secs(60), "the first half", |s| {
        metric(s, "wrongbook_events_total", &[]) == first.len() as f64
            && metric(s, "wrongbook_pending_age_seconds", &[]) == 0.0
    });

    // Stall the sink: hold a write lock on the wide table for 5 s while events arrive.
    let mut lock = db.connect();
    lock.execute_script(&format!("LOCK TABLES {WIDE} WRITE"))
        .unwrap();
    produce_messages(&config.kafka, second).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    lock.execute_script("UNLOCK TABLES").unwrap();
    drop(lock);
    wait_for_table(
        &db,
        &model.table(&generated.dims),
        Duration::from_secs(60),
        &log,
    );
    wait_for_metrics(&metrics, Duration::from_secs(30), "the alert to end", |s| {
        metric(s, "wrongbook_alert_active", &[("alert", "latency")]) == 0.0
    });
    assert!(terminate(job).success());

    let alerts = read_topic(
        &config.kafka.bootstrap_servers,
        &config.kafka.alerts_topic,
        2,
    );
    let latency: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "alert" && a["reason"] == "latency")
        .collect();
    let states: Vec<&str> = latency
        .iter()
        .map(|a| a["data"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["firing", "resolved"], "{alerts:#?}");
    assert_eq!(latency[0]["severity"], "critical");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log_text
            .lines()
            .filter(|l| l.contains("threshold alert")
                && l.contains("latency")
                && !l.contains("resolved"))
            .count(),
        1,
        "logged once per episode"
    );
}
