//! Hostile input: every kind of bad message lands in its documented outcome (a dead letter with
//! its reason, or skipped), the counts add up to the input, and the engine keeps going: the good
//! events around the bad ones are all in the table.

mod common;

use common::MemoryRun;
use wrongbook::sink::dead_letters::TOO_LARGE_RAW_BYTES;
use wrongbook::source::SourcePosition;

fn event(event_type: &str, payload: &str) -> String {
    format!(
        r#"{{"domain":"wrongbook","type":"{event_type}","timestamp":1700000000000,"eventId":"e-x","payload":{payload}}}"#
    )
}

const ADD: &str = r#"{"userId":"u","questionId":"q"}"#;

/// (message, expected outcome: a dead-letter reason, or "skipped").
fn hostile() -> Vec<(Vec<u8>, &'static str)> {
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = "x".repeat(2 << 20);
    let cases: Vec<(Vec<u8>, &'static str)> = vec![
        (b"\xc3\x28{}".to_vec(), "invalid_utf8"),
        (b"{\"domain\":\"wrongbook\xff\"}".to_vec(), "invalid_utf8"),
        (b"".to_vec(), "invalid_json"),
        (b"   ".to_vec(), "invalid_json"),
        (b"{".to_vec(), "invalid_json"),
        (b"{'a':1}".to_vec(), "invalid_json"),
        (b"{\"a\":NaN}".to_vec(), "invalid_json"),
        (b"{\"a\":Infinity}".to_vec(), "invalid_json"),
        (b"{\"a\":1,}".to_vec(), "invalid_json"),
        (b"{\"a\":1} // c".to_vec(), "invalid_json"),
        (b"{\"a\":\"\\ud800\"}".to_vec(), "invalid_json"),
        (b"{\"a\":\"tab\there\"}".to_vec(), "invalid_json"),
        (b"{} {}".to_vec(), "invalid_json"),
        // Nesting is skipped without recursion where no field is read, and rejected where one is.
        (event("wrongbook_add", &format!(r#"{{"userId":"u","questionId":"q","wrongRecordId":"deep-1","extra":{deep}}}"#)).into_bytes(), "accepted"),
        (event("wrongbook_add", &format!(r#"{{"userId":{deep},"questionId":"q"}}"#)).into_bytes(), "invalid_field"),
        (b"[]".to_vec(), "not_an_object"),
        (b"42".to_vec(), "not_an_object"),
        (b"null".to_vec(), "not_an_object"),
        (b"\"wrongbook\"".to_vec(), "not_an_object"),
        (br#"{"domain":"wrongbook","domain":"wrongbook","type":"wrongbook_add","timestamp":1,"eventId":"e","payload":{}}"#.to_vec(), "duplicate_key"),
        (event("wrongbook_add", r#"{"userId":"u","userId":"v","questionId":"q"}"#).into_bytes(), "duplicate_key"),
        (br#"{"type":"wrongbook_add","timestamp":1,"eventId":"e","payload":{}}"#.to_vec(), "missing_field"),
        (br#"{"domain":"wrongbook","timestamp":1,"eventId":"e","payload":{}}"#.to_vec(), "missing_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","eventId":"e","payload":{}}"#.to_vec(), "missing_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":1,"payload":{}}"#.to_vec(), "missing_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":1,"eventId":"e"}"#.to_vec(), "missing_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":1,"eventId":null,"payload":{}}"#.to_vec(), "missing_field"),
        (event("wrongbook_add", r#"{"userId":"u"}"#).into_bytes(), "missing_field"),
        (event("wrongbook_fix", r#"{"userId":"u","questionId":"q","fixTime":1700000000000,"fixResult":"1"}"#).into_bytes(), "missing_field"),
        (br#"{"domain":["wrongbook"],"type":"wrongbook_add","timestamp":1,"eventId":"e","payload":{}}"#.to_vec(), "invalid_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":"soon","eventId":"e","payload":{}}"#.to_vec(), "invalid_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":1e12,"eventId":"e","payload":{}}"#.to_vec(), "invalid_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":9223372036854775808,"eventId":"e","payload":{}}"#.to_vec(), "invalid_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":"99999999999999999999","eventId":"e","payload":{}}"#.to_vec(), "invalid_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":1,"eventId":{},"payload":{}}"#.to_vec(), "invalid_field"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":1,"eventId":"e","payload":"{}"}"#.to_vec(), "invalid_field"),
        (event("wrongbook_add", r#"{"userId":true,"questionId":"q"}"#).into_bytes(), "invalid_field"),
        (event("wrongbook_add", r#"{"userId":"u","questionId":"q","wrongTime":-1.5}"#).into_bytes(), "invalid_field"),
        (event("wrongbook_add", r#"{"userId":"u","questionId":"q","createTime":"0x10"}"#).into_bytes(), "invalid_field"),
        (event("wrongbook_fix", r#"{"userId":"u","questionId":"q","wrongRecordId":"1","fixTime":1700000000000,"fixResult":"1","attempts":2147483648}"#).into_bytes(), "invalid_field"),
        (event("wrongbook_add", &format!(r#"{{"userId":"u","questionId":"q","question":"{huge}"}}"#)).into_bytes(), "message_too_large"),
        (event("wrongbook_add", &format!(r#"{{"userId":"u","questionId":"q","question":"{}"}}"#, "题".repeat(30_000))).into_bytes(), "value_too_long"),
        (event("wrongbook_add", &format!(r#"{{"userId":"{}","questionId":"q"}}"#, "u".repeat(51))).into_bytes(), "value_too_long"),
        (event("wrongbook_add", &format!(r#"{{"userId":"u","questionId":"q","subject":"{}"}}"#, "s".repeat(21))).into_bytes(), "value_too_long"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":1,"eventId":"e","payload":{"userId":"u","questionId":"q","wrongTime":99999999999999}}"#.to_vec(), "time_out_of_range"),
        (br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":0,"eventId":"e","payload":{"userId":"u","questionId":"q"}}"#.to_vec(), "time_out_of_range"),
        (event("wrongbook_mystery", ADD).into_bytes(), "unknown_type"),
        (event(&"t".repeat(5000), ADD).into_bytes(), "unknown_type"),
        (event("wrongbook_share", ADD).into_bytes(), "unknown_processor"),
        (event("wrongbook_fix", r#"{"userId":"u","questionId":"q","wrongRecordId":"1","fixTime":1700000000000,"fixResult":"maybe"}"#).into_bytes(), "unknown_fix_result"),
        (event("wrongbook_fix", r#"{"userId":"u","questionId":"q","wrongRecordId":"1","fixTime":1700000000000,"fixResult":"CORRECT"}"#).into_bytes(), "unknown_fix_result"),
        (event("wrongbook_review", ADD).into_bytes(), "skipped"),
        (br#"{"domain":"another","type":"wrongbook_add","timestamp":1,"eventId":"e","payload":{}}"#.to_vec(), "skipped"),
        (event("wrongbook_add", r#"{"userId":"'; DROP TABLE dwd_wrong_record_wide_delta; --","questionId":"q\u0000\u001f","wrongRecordId":"sql-1","question":"<script>alert(1)</script>"}"#).into_bytes(), "accepted"),
    ];
    cases
}

#[test]
fn every_hostile_message_lands_in_its_outcome_and_the_engine_keeps_going() {
    let cases = hostile();
    let mut messages = Vec::new();
    let mut good_ids = Vec::new();
    for (i, (message, _)) in cases.iter().enumerate() {
        // A good add between every two hostile messages.
        let id = 5_000_000 + i as i64;
        good_ids.push(id);
        messages.push(
            format!(r#"{{"domain":"wrongbook","type":"wrongbook_add","timestamp":1700000000000,"eventId":"g{i}","payload":{{"userId":"u","questionId":"q","wrongRecordId":"{id}"}}}}"#)
                .into_bytes(),
        );
        messages.push(message.clone());
    }
    for workers in [1, 2] {
        let mut run = MemoryRun::new(workers, Default::default());
        run.chunk_messages = 3;
        let (summary, table, dead) = run.run(messages.clone());
        let totals = summary.outcomes.totals();
        assert_eq!(
            totals.total() as usize,
            messages.len(),
            "the counts add up to the input"
        );
        for id in &good_ids {
            assert!(table.contains_key(id), "good event {id} was processed");
        }
        let mut skipped = 0;
        for (i, (message, expected)) in cases.iter().enumerate() {
            let index = (2 * i + 1) as u64;
            let letter = dead
                .iter()
                .find(|d| d.source == SourcePosition::Index(index));
            match *expected {
                "skipped" => {
                    skipped += 1;
                    assert!(letter.is_none(), "case {i} is skipped, not dead");
                }
                "accepted" => assert!(letter.is_none(), "case {i} is accepted"),
                reason => {
                    let letter =
                        letter.unwrap_or_else(|| panic!("case {i} ({reason}) has no dead letter"));
                    assert_eq!(
                        letter.reason.as_str(),
                        reason,
                        "case {i}: {}",
                        letter.detail
                    );
                    if reason == "message_too_large" {
                        // Its start is kept, and its length; the source locates the rest.
                        assert_eq!(letter.raw[..], message[..TOO_LARGE_RAW_BYTES], "case {i}");
                        assert_eq!(letter.raw_bytes, Some(message.len()), "case {i}");
                    } else {
                        assert_eq!(&letter.raw, message, "case {i}: raw bytes kept");
                        assert_eq!(letter.raw_bytes, None, "case {i}");
                    }
                }
            }
        }
        assert_eq!(
            (totals.skipped_domain + totals.skipped_disabled) as usize,
            skipped
        );
        assert!(table.contains_key(&common::reference::reference_id("deep-1")));
        let sql_row = table
            .get(&(common::reference::reference_id("sql-1")))
            .expect("the SQL-looking add is stored");
        assert_eq!(
            sql_row[2].as_deref(),
            Some("'; DROP TABLE dwd_wrong_record_wide_delta; --")
        );
    }
}
