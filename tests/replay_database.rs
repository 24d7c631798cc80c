//! `replay` into a real database, MariaDB (each test in its own database; both of its write
//! paths, bulk executions and multi-row statements) and SQLite: the table ends equal to the
//! reference model; a later dimension snapshot corrects old rows; a table holding stale and
//! wrong rows ends exact; a value too long for its column is a dead letter, never a truncated
//! row.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{assert_tables_equal, reference, Row, TestDatabase};
use wrongbook::commands::gen::{
    dims_sql, generate, routing_sql, write_jsonl, GenOptions, Generated,
};
use wrongbook::commands::init_db::init_db;
use wrongbook::commands::replay::{replay, ReplayOptions};
use wrongbook::config::Config;
use wrongbook::engine::RunSummary;
use wrongbook::sink::mysql::MysqlWriter;
use wrongbook::sink::statements::WideTable;
use wrongbook::sink::WriteOptions;

fn prepare(db: &TestDatabase, opts: &GenOptions) -> (Generated, PathBuf) {
    let generated = generate(opts);
    let mut conn = init_db(&db.config, None).expect("init-db");
    // init-db is idempotent.
    init_db(&db.config, None).expect("init-db again");
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    let input = db.dir().join("events.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    write_jsonl(&mut file, &generated.messages).unwrap();
    (generated, input)
}

/// Replays `options.input` into the wide table with `config`, then checks that the table
/// equals `expected`; `what` names the step in failures.
fn replay_expecting(
    db: &TestDatabase,
    config: &Config,
    options: ReplayOptions,
    expected: &BTreeMap<i64, Row>,
    what: &str,
) -> RunSummary {
    let summary = replay(config, &options).unwrap_or_else(|e| panic!("replay {what}: {e}"));
    assert_tables_equal(
        &db.read_table("dwd_wrong_record_wide_delta"),
        expected,
        what,
    );
    summary
}

fn replay_matches_reference(db: TestDatabase) {
    let opts = GenOptions {
        events: 15_000,
        seed: 3,
        ..GenOptions::default()
    };
    let (generated, input) = prepare(&db, &opts);
    let (model, expected) = reference(&generated.messages, &generated.dims);
    let summary = replay_expecting(
        &db,
        &db.config,
        ReplayOptions {
            input: input.clone(),
            workers: Some(2),
            ..ReplayOptions::default()
        },
        &expected,
        "after replay",
    );
    assert_eq!(
        summary.outcomes.totals().dead_letter_total() as usize,
        model.dead
    );
    let dead_letters = std::fs::read_to_string(db.dir().join("events.dead-letters.jsonl")).unwrap();
    assert_eq!(dead_letters.lines().count(), model.dead);
    // Each names the line of the input its message is on.
    let input_bytes = std::fs::read(&input).unwrap();
    let input_lines: Vec<&[u8]> = input_bytes.split(|&b| b == b'\n').collect();
    for line in dead_letters.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["kind"], "dead_letter");
        assert!(record["reason"].is_string());
        let number = record["source"]["line"].as_u64().expect("a line number") as usize;
        let raw = record["raw"].as_str().expect("raw as a string");
        let raw = match record["raw_encoding"].as_str() {
            Some("base64") => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .unwrap()
            }
            _ => raw.as_bytes().to_vec(),
        };
        let on_line = input_lines[number - 1];
        let on_line = on_line.strip_suffix(b"\r").unwrap_or(on_line);
        assert!(
            on_line.starts_with(&raw)
                && (raw.len() == on_line.len() || record["raw_bytes"].is_u64()),
            "dead letter {line} is not line {number} of the input"
        );
    }

    // A second replay, on another worker count and (on MariaDB) with multi-row statements
    // instead of bulk executions, corrects every row of the now-full table.
    db.connect()
        .execute_script("UPDATE dwd_wrong_record_wide_delta SET user_id = 'stale'")
        .unwrap();
    let mut multi_row = db.config.clone();
    multi_row.sink.mariadb_bulk = false;
    replay_expecting(
        &db,
        &multi_row,
        ReplayOptions {
            input,
            workers: Some(3),
            ..ReplayOptions::default()
        },
        &expected,
        "after a second replay",
    );
}

fn later_dims_correct_old_rows(db: TestDatabase) {
    let opts = GenOptions {
        events: 8_000,
        seed: 5,
        ..GenOptions::default()
    };
    let (generated, input) = prepare(&db, &opts);
    let (_, before) = reference(&generated.messages, &generated.dims);
    let (_, after) = reference(&generated.messages, &generated.dims_changed);
    assert_ne!(before, after, "the change must matter");
    let change = db.dir().join("change.sql");
    std::fs::write(&change, dims_sql(&generated.dims_changed)).unwrap();
    let summary = replay_expecting(
        &db,
        &db.config,
        ReplayOptions {
            input,
            workers: Some(2),
            dims_after: Some(change),
            ..ReplayOptions::default()
        },
        &after,
        "after the dimension change",
    );
    assert!(summary.dim_rows_changed > 0);
}

fn stale_table_ends_exact(db: TestDatabase) {
    let opts = GenOptions {
        events: 5_000,
        seed: 8,
        ..GenOptions::default()
    };
    let (generated, input) = prepare(&db, &opts);
    let (_, expected) = reference(&generated.messages, &generated.dims);
    let some_id = *expected.keys().nth(10).unwrap();
    let mut conn = db.connect();
    conn.execute_script(&format!(
        "INSERT INTO dwd_wrong_record_wide_delta (id, wrong_id, user_id, question_id, event_id, event_type) VALUES
         ({some_id}, 'wrong', 'wrong', 'wrong', 'wrong', 'wrong'),
         (1, 'gone', 'u', 'q', 'e', 't'),
         (2, 'gone', 'u', 'q', 'e', 't'),
         (-5, 'negative', 'u', 'q', 'e', 't'),
         (9000000000000000001, 'gone', 'u', 'q', 'e', 't');"
    ))
    .unwrap();
    let summary = replay_expecting(
        &db,
        &db.config,
        ReplayOptions {
            input,
            workers: Some(2),
            ..ReplayOptions::default()
        },
        &expected,
        "after reconcile",
    );
    assert_eq!(summary.rows_reconciled, 4);
}

fn scratch_table_and_too_long_values(db: TestDatabase) {
    init_db(&db.config, Some("wide_scratch")).expect("init-db --table");
    let mut conn = db.connect();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();
    let long = "长".repeat(51);
    let lines = [
        format!(
            r#"{{"domain":"wrongbook","type":"wrongbook_add","timestamp":1700000000000,"eventId":"e1","payload":{{"userId":"{long}","questionId":"q","wrongRecordId":"1"}}}}"#
        ),
        format!(
            r#"{{"domain":"wrongbook","type":"wrongbook_add","timestamp":1700000000000,"eventId":"e2","payload":{{"userId":"{}","questionId":"q","wrongRecordId":"2","subject":"math"}}}}"#,
            "长".repeat(50)
        ),
    ];
    let input = db.dir().join("long.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let summary = replay(
        &db.config,
        &ReplayOptions {
            input,
            workers: Some(1),
            table: Some("wide_scratch".into()),
            ..ReplayOptions::default()
        },
    )
    .expect("replay into a scratch table");
    assert_eq!(
        summary.outcomes.totals().dead_letters.get("value_too_long"),
        Some(&1)
    );
    let table = db.read_table("wide_scratch");
    assert_eq!(table.len(), 1);
    assert_eq!(
        table[&2][2].as_deref(),
        Some("长".repeat(50).as_str()),
        "stored whole"
    );
    assert_eq!(
        table[&2][4].as_deref(),
        Some("数学"),
        "subject name from the spec's map"
    );
}

/// Upserts go to MariaDB as bulk executions, unless turned off or the wide table has triggers
/// (MDEV-24411); with a trigger the table still ends equal to the reference model and the
/// trigger sees every row.
#[test]
fn mariadb_bulk_executions_are_not_used_on_a_table_with_triggers() {
    let Some(db) = TestDatabase::mariadb() else {
        return;
    };
    let opts = GenOptions {
        events: 3_000,
        seed: 11,
        ..GenOptions::default()
    };
    let (generated, input) = prepare(&db, &opts);
    let (_, expected) = reference(&generated.messages, &generated.dims);
    let writes_bulk = |config: &Config| {
        MysqlWriter::connect(
            config.database(),
            WideTable::plain("dwd_wrong_record_wide_delta"),
            WriteOptions::of(&config.sink),
        )
        .expect("connect a writer")
        .writes_bulk()
    };
    assert!(writes_bulk(&db.config), "MariaDB takes bulk executions");
    let mut multi_row = db.config.clone();
    multi_row.sink.mariadb_bulk = false;
    assert!(!writes_bulk(&multi_row), "turned off");

    db.connect()
        .execute_script(
            "CREATE TABLE wide_audit (id BIGINT);
             CREATE TRIGGER wide_audited AFTER INSERT ON dwd_wrong_record_wide_delta
             FOR EACH ROW INSERT INTO wide_audit VALUES (NEW.id)",
        )
        .unwrap();
    assert!(!writes_bulk(&db.config), "the table has a trigger");
    replay_expecting(
        &db,
        &db.config,
        ReplayOptions {
            input,
            workers: Some(2),
            ..ReplayOptions::default()
        },
        &expected,
        "into a table with a trigger",
    );
    let count = |sql: &str| {
        db.connect().query(sql).unwrap().rows[0][0]
            .to_int()
            .unwrap()
    };
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM dwd_wrong_record_wide_delta \
             WHERE id NOT IN (SELECT id FROM wide_audit)"
        ),
        Some(0),
        "the trigger saw every row inserted"
    );
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn mariadb() {
                if let Some(db) = super::TestDatabase::mariadb() {
                    super::$name(db);
                }
            }

            #[test]
            fn sqlite() {
                super::$name(super::TestDatabase::sqlite());
            }
        }
    };
}

on_both!(replay_matches_reference);
on_both!(later_dims_correct_old_rows);
on_both!(stale_table_ends_exact);
on_both!(scratch_table_and_too_long_values);
