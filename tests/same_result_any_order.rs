//! The result depends only on the set of events (SPEC §4): shuffling, duplicating and splitting
//! the same events over 1, 2 and 4 workers gives the same table, and that table is what the
//! naive reference model computes. Runs in memory.

mod common;

use common::{assert_tables_equal, reference, MemoryRun};
use proptest::prelude::*;
use wrongbook::commands::gen::{generate, GenOptions, Rng};

#[test]
fn generated_events_match_the_reference_on_1_2_and_4_workers() {
    let generated = generate(&GenOptions {
        events: 20_000,
        seed: 42,
        ..GenOptions::default()
    });
    let (model, expected) = reference(&generated.messages, &generated.dims);
    assert!(
        expected.len() > 3_000,
        "the generator makes a real table: {}",
        expected.len()
    );
    for workers in [1, 2, 4] {
        let (summary, table, dead) =
            MemoryRun::new(workers, generated.dims.clone()).run(generated.messages.clone());
        assert_tables_equal(&table, &expected, &format!("{workers} worker(s)"));
        let totals = summary.outcomes.totals();
        assert_eq!(
            totals.total() as usize,
            generated.messages.len(),
            "every message has one outcome"
        );
        assert_eq!(totals.accepted as usize, model.accepted);
        assert_eq!(
            (totals.skipped_domain + totals.skipped_disabled) as usize,
            model.skipped
        );
        assert_eq!(totals.dead_letter_total() as usize, model.dead);
        assert_eq!(dead.len(), model.dead, "every dead letter is written");
    }
}

#[test]
fn a_later_dimension_snapshot_corrects_rows_already_written() {
    let generated = generate(&GenOptions {
        events: 10_000,
        seed: 7,
        ..GenOptions::default()
    });
    let (_, before) = reference(&generated.messages, &generated.dims);
    let (_, after) = reference(&generated.messages, &generated.dims_changed);
    let changed = before
        .iter()
        .filter(|(id, row)| after.get(id) != Some(row))
        .count();
    assert!(changed > 100, "the change touches many rows: {changed}");
    for workers in [1, 3] {
        let mut run = MemoryRun::new(workers, generated.dims.clone());
        run.dims_after = Some(generated.dims_changed.clone());
        let (summary, table, _) = run.run(generated.messages.clone());
        assert!(summary.dim_rows_changed > 0);
        assert_tables_equal(
            &table,
            &after,
            &format!("after the change, {workers} worker(s)"),
        );
    }
}

#[test]
fn stale_rows_in_the_table_are_replaced_or_removed() {
    let generated = generate(&GenOptions {
        events: 3_000,
        seed: 9,
        ..GenOptions::default()
    });
    let (_, expected) = reference(&generated.messages, &generated.dims);
    let run = MemoryRun::new(2, generated.dims.clone());
    // A table left by an older job: a wrong version of a real row, and rows of nothing.
    let (first_id, _) = expected.iter().next().unwrap();
    let mut stale = wrongbook::dataflow::wide::WideRow {
        id: *first_id as u64,
        wrong_id: "stale".into(),
        user_id: "someone".into(),
        subject: None,
        subject_name: None,
        question_id: "q".into(),
        question: None,
        pattern_id: None,
        pattern_name: None,
        teach_type_id: None,
        teach_type_name: None,
        collect_time: 1,
        fix_id: None,
        fix_time: None,
        fix_result: None,
        fix_result_desc: None,
        event_id: "e".into(),
        event_type: "wrongbook_add".into(),
        extra: Vec::new(),
    };
    run.table.preload(stale.clone());
    for id in [1u64, 2, 3, 77_777_777_777] {
        stale.id = id;
        run.table.preload(stale.clone());
    }
    let (summary, table, _) = run.run(generated.messages);
    assert_tables_equal(&table, &expected, "after reconcile");
    assert_eq!(summary.rows_reconciled, 4);
}

/// One message of the small hand-made kind.
fn message(event_type: &str, ts: i64, event_id: &str, payload: serde_json::Value) -> Vec<u8> {
    serde_json::json!({"domain": "wrongbook", "type": event_type, "timestamp": ts, "eventId": event_id, "payload": payload})
        .to_string()
        .into_bytes()
}

/// SPEC §4 orders lifecycle events by (timestamp, eventId) and fixes by (fixTime, eventId).
/// Events that tie on both must still give one result whatever their order: the engine breaks
/// such ties by kind (a delete beats an add) and then by content.
#[test]
fn events_tied_on_time_and_event_id_give_one_table_in_any_order() {
    let ts = 1_700_000_000_000;
    let add = |wrong_id: &str, user: &str| {
        message(
            "wrongbook_add",
            ts,
            "e1",
            serde_json::json!({"userId": user, "questionId": "q", "wrongRecordId": wrong_id, "patternId": "pattern_1"}),
        )
    };
    let delete = |wrong_id: &str| {
        message(
            "wrongbook_delete",
            ts,
            "e1",
            serde_json::json!({"userId": "u", "questionId": "q", "wrongRecordId": wrong_id}),
        )
    };
    let fix = |wrong_id: &str, result: &str| {
        message(
            "wrongbook_fix",
            ts + 5_000,
            "e2",
            serde_json::json!({"userId": "u", "questionId": "q", "wrongRecordId": wrong_id, "fixTime": ts + 5_000, "fixResult": result}),
        )
    };
    let events = vec![
        add("1", "u1"),
        delete("1"),
        add("2", "u2-a"),
        add("2", "u2-b"),
        add("3", "u3"),
        fix("3", "correct"),
        fix("3", "wrong"),
    ];
    let dims = wrongbook::commands::gen::dims(&GenOptions {
        patterns: 3,
        chapters: 2,
        teaching_types: 3,
        seed: 1,
        ..GenOptions::default()
    });
    let (_, expected) = reference(&events, &dims);
    let (_, expected_reversed) =
        reference(&events.iter().rev().cloned().collect::<Vec<_>>(), &dims);
    assert_eq!(
        expected, expected_reversed,
        "the reference model is order-free"
    );
    assert_eq!(
        expected.keys().copied().collect::<Vec<_>>(),
        vec![2, 3],
        "the add that ties with a delete is deleted"
    );
    for workers in [1, 2] {
        for order in [events.clone(), events.iter().rev().cloned().collect()] {
            let (_, table, _) = MemoryRun::new(workers, dims.clone()).run(order);
            assert_tables_equal(&table, &expected, &format!("{workers} worker(s)"));
        }
    }
}

/// Small hand-made event sets that collide on purpose: few wrong ids (one written twice as
/// "7" and "007"), adds, deletes and fixes with close timestamps and equal event times, and
/// event ids drawn from a small set so that events often tie on (timestamp, eventId).
fn small_events() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let event = (0usize..6, 0usize..4, 0i64..6, 0u32..1000, 0usize..5).prop_map(
        |(kind, wrong, ts, id, pattern)| {
            let wrong_id = ["7", "007", "8", "w-a", "w-b", "9"][wrong];
            let ts = 1_700_000_000_000 + ts * 1000;
            let event_id = format!("e{}", id % 40);
            let (event_type, payload) = match kind {
                0 | 1 => (
                    "wrongbook_add",
                    serde_json::json!({"userId": format!("u{id}"), "questionId": "q", "wrongRecordId": wrong_id,
                        "patternId": format!("pattern_{pattern}"), "chapterId": if id % 2 == 0 { serde_json::json!(null) } else { serde_json::json!(format!("chapter_{:03}", id % 3)) },
                        "subject": "math"}),
                ),
                2 | 3 => (
                    "wrongbook_fix",
                    serde_json::json!({"userId": "u", "questionId": "q", "wrongRecordId": wrong_id,
                        "fixTime": ts + (id as i64 % 3) * 1000, "fixResult": if id % 2 == 0 { "correct" } else { "0" }}),
                ),
                4 => (
                    "wrongbook_delete",
                    serde_json::json!({"userId": "u", "questionId": "q", "wrongRecordId": wrong_id}),
                ),
                _ => ("wrongbook_add", serde_json::json!({"userId": "u"})),
            };
            message(event_type, ts, &event_id, payload)
        },
    );
    proptest::collection::vec(event, 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn shuffled_duplicated_and_split_events_give_the_reference_table(
        events in small_events(),
        seed in any::<u64>(),
        chunk in 1usize..5,
    ) {
        let dims = wrongbook::commands::gen::dims(&GenOptions { patterns: 5, chapters: 3, teaching_types: 6, seed, ..GenOptions::default() });
        let (_, expected) = reference(&events, &dims);
        let mut rng = Rng::new(seed);
        let mut shuffled = events.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
        let extra: Vec<Vec<u8>> = events.iter().filter(|_| rng.chance(0.3)).cloned().collect();
        shuffled.extend(extra);
        for workers in [1, 2, 4] {
            let mut run = MemoryRun::new(workers, dims.clone());
            run.chunk_messages = chunk;
            run.epoch_max_messages = chunk * 2;
            let (_, table, _) = run.run(shuffled.clone());
            prop_assert_eq!(&table, &expected, "{} workers", workers);
        }
    }
}
