//! A new dimension table added by the dataflow spec alone (`dataflows/examples/lookup-table.toml`):
//! `init-db` adds its columns to the wide table, a replay fills them from the table's rows (NULL
//! where no row matches), and a later change of the lookup table corrects exactly the rows whose
//! values changed. On MariaDB and SQLite.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{assert_tables_equal, reference, services_required, TestDatabase};
use wrongbook::commands::gen::{dims_sql, generate, routing_sql, write_jsonl, GenOptions};
use wrongbook::commands::init_db::init_db;
use wrongbook::commands::replay::{replay, ReplayOptions};
use wrongbook::db::SqlValue;

const WIDE: &str = "dwd_wrong_record_wide_delta";

/// The shipped spec with the example lookup table appended.
fn spec_with_lookup(dir: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = std::fs::read_to_string(root.join("dataflows/wrongbook.toml")).unwrap();
    let example =
        std::fs::read_to_string(root.join("dataflows/examples/lookup-table.toml")).unwrap();
    let path = dir.join("spec.toml");
    std::fs::write(&path, format!("{spec}\n{example}")).unwrap();
    path.display().to_string()
}

fn text(value: &SqlValue) -> Option<String> {
    value.clone().into_text()
}

/// id → (question_difficulty, question_knowledge_point) as the table holds them.
fn lookup_columns(db: &TestDatabase) -> BTreeMap<i64, (Option<String>, Option<String>)> {
    let rows = db
        .connect()
        .query(&format!(
            "SELECT id, question_difficulty, question_knowledge_point FROM {WIDE}"
        ))
        .unwrap();
    rows.rows
        .iter()
        .map(|r| (r[0].to_int().unwrap().unwrap(), (text(&r[1]), text(&r[2]))))
        .collect()
}

fn lookup_table_fills_and_corrects_its_columns(mut db: TestDatabase) {
    db.config.spec = spec_with_lookup(db.dir());
    let generated = generate(&GenOptions {
        events: 4_000,
        seed: 81,
        ..GenOptions::default()
    });
    let mut conn = init_db(&db.config, None).expect("init-db adds the lookup columns");
    init_db(&db.config, None).expect("init-db is idempotent");
    conn.execute_script(&dims_sql(&generated.dims)).unwrap();
    conn.execute_script(&routing_sql("flink_routing_config"))
        .unwrap();

    // The question bank: every other question of the events, some with a NULL column.
    let (_, expected) = reference(&generated.messages, &generated.dims);
    let questions: BTreeSet<String> = expected
        .values()
        .map(|row| row[5].clone().unwrap())
        .collect();
    let mut bank: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for (i, q) in questions.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let point = (i % 3 != 0).then(|| format!("知识点 {i}"));
        bank.insert(
            q.clone(),
            (Some(["easy", "medium", "hard"][i % 3].into()), point),
        );
    }
    let quote = |v: &Option<String>| {
        v.as_ref()
            .map_or("NULL".into(), |s| format!("'{}'", s.replace('\'', "''")))
    };
    let mut sql = String::from(
        "CREATE TABLE question_bank (question_id VARCHAR(64) PRIMARY KEY, difficulty VARCHAR(20), knowledge_point VARCHAR(100));\n",
    );
    for (q, (difficulty, point)) in &bank {
        sql += &format!(
            "INSERT INTO question_bank VALUES ('{q}', {}, {});\n",
            quote(difficulty),
            quote(point)
        );
    }
    conn.execute_script(&sql).unwrap();

    // Later: one question gets harder, one leaves the bank, one joins it.
    let mut banked = bank.keys();
    let (harder, removed) = (
        banked.next().unwrap().clone(),
        banked.next().unwrap().clone(),
    );
    let joined = questions
        .iter()
        .find(|q| !bank.contains_key(*q))
        .unwrap()
        .clone();
    let change = db.dir().join("bank-change.sql");
    std::fs::write(
        &change,
        format!(
            "UPDATE question_bank SET difficulty = 'very hard' WHERE question_id = '{harder}';\n\
             DELETE FROM question_bank WHERE question_id = '{removed}';\n\
             INSERT INTO question_bank VALUES ('{joined}', 'easy', 'new');\n"
        ),
    )
    .unwrap();
    let mut after = bank.clone();
    after.get_mut(&harder).unwrap().0 = Some("very hard".into());
    after.remove(&removed);
    after.insert(joined.clone(), (Some("easy".into()), Some("new".into())));

    let input = db.dir().join("events.jsonl");
    write_jsonl(
        &mut std::fs::File::create(&input).unwrap(),
        &generated.messages,
    )
    .unwrap();
    let summary = replay(
        &db.config,
        &ReplayOptions {
            input,
            workers: Some(2),
            dims_after: Some(change),
            ..ReplayOptions::default()
        },
    )
    .expect("replay");

    // The seed's columns are as without the lookup; the lookup's hold the bank after the change.
    assert_tables_equal(&db.read_table(WIDE), &expected, "seed columns");
    let want: BTreeMap<i64, (Option<String>, Option<String>)> = expected
        .iter()
        .map(|(id, row)| {
            let q = row[5].as_ref().unwrap();
            (*id, after.get(q).cloned().unwrap_or((None, None)))
        })
        .collect();
    let got = lookup_columns(&db);
    assert_eq!(got, want);
    assert!(got.values().filter(|v| v.0.is_some()).count() > 10);
    assert!(got.values().any(|v| v.0.is_some() && v.1.is_none()));

    // Exactly the rows of the three changed questions were rewritten.
    let changed = expected
        .values()
        .filter(|row| {
            let q = row[5].as_deref().unwrap();
            q == harder || q == removed || q == joined
        })
        .count();
    let report = summary.dim_change.expect("the change was applied");
    assert_eq!(report.rows_written as usize, changed);
    assert_eq!(
        summary.dim_rows_changed, 4,
        "one update (-1, +1), one delete, one insert"
    );
}

#[test]
fn lookup_table_on_sqlite() {
    lookup_table_fills_and_corrects_its_columns(TestDatabase::sqlite());
}

#[test]
fn lookup_table_on_mariadb() {
    let Some(db) = TestDatabase::mariadb() else {
        assert!(!services_required());
        return;
    };
    lookup_table_fills_and_corrects_its_columns(db);
}
