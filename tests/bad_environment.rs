//! A bad environment is one clear error naming the address, table or key and the fix, with a
//! non-zero exit: never a panic or a hang. (Bad configuration files: tests/cli.rs.)

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{services_required, TestDatabase};
use wrongbook::commands::init_db::init_db;

fn wrongbook(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_wrongbook"))
        .args(args)
        .env_remove("WRONGBOOK_LOG")
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_clear_failure(out: &Output, needles: &[&str]) {
    let text = stderr(out);
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` in:\n{text}");
    }
}

/// `replay` of a one-line file with the configuration `config`.
fn replay_with(db: &TestDatabase, config: &str) -> Output {
    let path = db.dir().join("job.toml");
    std::fs::write(&path, config).unwrap();
    let input = db.dir().join("in.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let (out, _) = wrongbook(&[
        "replay",
        "-c",
        path.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    out
}

#[test]
fn an_unreachable_broker_is_named_within_seconds() {
    let db = TestDatabase::sqlite();
    init_db(&db.config, None).unwrap();
    let config = db.dir().join("job.toml");
    std::fs::write(
        &config,
        format!(
            "[mysql]\nurl = \"{}\"\n[metrics]\nlisten = \"\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n",
            db.config.mysql.url
        ),
    )
    .unwrap();
    let (out, took) = wrongbook(&["run", "-c", config.to_str().unwrap()]);
    assert_clear_failure(&out, &["127.0.0.1:1", "bootstrap_servers"]);
    assert!(took < Duration::from_secs(60), "gave up in {took:?}");
}

#[test]
fn producing_to_an_unreachable_broker_is_named_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[metrics]\nlisten = \"\"\n",
    )
    .unwrap();
    let (out, took) = wrongbook(&[
        "gen",
        "--events",
        "10",
        "--to-kafka",
        "-c",
        config.to_str().unwrap(),
    ]);
    assert_clear_failure(
        &out,
        &["127.0.0.1:1", "no broker answered", "bootstrap_servers"],
    );
    assert!(took < Duration::from_secs(30), "gave up in {took:?}");
}

#[test]
fn a_missing_routing_table_is_named() {
    let db = TestDatabase::sqlite();
    init_db(&db.config, None)
        .unwrap()
        .execute_script("DROP TABLE flink_routing_config")
        .unwrap();
    let out = replay_with(
        &db,
        &format!("[mysql]\nurl = \"{}\"\n", db.config.mysql.url),
    );
    assert_clear_failure(&out, &["flink_routing_config"]);
}

#[test]
fn wrong_database_credentials_are_named_without_the_password() {
    let Some(db) = TestDatabase::mariadb() else {
        assert!(!services_required());
        return;
    };
    let out = replay_with(
        &db,
        &format!(
            "[mysql]\nurl = \"{}\"\nusername = \"nobody_here\"\npassword = \"s3cret-pw\"\n",
            db.config.mysql.url
        ),
    );
    assert_clear_failure(&out, &["127.0.0.1:3306", "Access denied", "nobody_here"]);
    assert!(!stderr(&out).contains("s3cret-pw"));
}

#[test]
fn an_error_in_a_later_statement_of_a_script_is_reported() {
    for db in [TestDatabase::sqlite()]
        .into_iter()
        .chain(TestDatabase::mariadb())
    {
        let mut conn = init_db(&db.config, None).unwrap();
        let error = conn
            .execute_script("DELETE FROM tower_pattern;\nINSERT INTO no_such_table VALUES (1);")
            .expect_err("the second statement fails");
        assert!(error.to_string().contains("no_such_table"), "{error}");
    }
}

#[test]
fn init_db_creates_a_missing_database_which_other_commands_name() {
    let Some(db) = TestDatabase::mariadb() else {
        assert!(!services_required());
        return;
    };
    // As on a fresh server: the test's database is gone (its drop at the end is IF EXISTS).
    let name = db.config.mysql.url.rsplit('/').next().unwrap().to_owned();
    db.connect()
        .execute_script(&format!("DROP DATABASE {name}"))
        .unwrap();
    let config = format!(
        "[mysql]\nurl = \"{}\"\nusername = \"root\"\n",
        db.config.mysql.url
    );
    let out = replay_with(&db, &config);
    assert_clear_failure(&out, &[&name, "Unknown database", "init-db"]);

    let path = db.dir().join("job.toml");
    let path = path.to_str().unwrap();
    for run in ["first", "second"] {
        let (out, _) = wrongbook(&["init-db", "-c", path]);
        assert!(out.status.success(), "{run} init-db: {}", stderr(&out));
    }
    let mut conn = db.connect();
    for table in [
        "tower_pattern",
        "flink_routing_config",
        "dwd_wrong_record_wide_delta",
    ] {
        let rows = conn.query(&format!("SELECT COUNT(*) FROM {table}"));
        assert!(rows.is_ok(), "{table}: {:?}", rows.err());
    }
    let charset = conn
        .query(&format!(
            "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA \
             WHERE SCHEMA_NAME = '{name}'"
        ))
        .unwrap();
    assert_eq!(
        charset.rows[0][0],
        wrongbook::db::SqlValue::Text("utf8mb4".into())
    );
}
