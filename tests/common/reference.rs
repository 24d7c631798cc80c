//! A small, naive reference model of SPEC §2–§6, written for the tests and sharing no code with
//! the engine: it parses with `serde_json::Value`, keeps every event, and computes each wide
//! row from scratch. The engine's tables must equal what it computes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use wrongbook::source::dims::DimSnapshot;

/// A wide row as comparable text: the 18 columns before `process_time`, times as epoch seconds.
pub type Row = Vec<Option<String>>;

/// A JSON object as its entries in order, so duplicate keys are visible.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn object(entries: Vec<(String, Value)>) -> Option<HashMap<String, Value>> {
    let n = entries.len();
    let map: HashMap<String, Value> = entries.into_iter().collect();
    (map.len() == n).then_some(map)
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Long,
    Int,
}

/// Err(()) = dead letter; Ok(None) = absent.
fn field(map: &HashMap<String, Value>, name: &str, ty: Ty) -> Result<Option<String>, ()> {
    let value = match map.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let (min, max) = match ty {
        Ty::Int => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    };
    match (ty, value) {
        (Ty::Str, Value::String(s)) => Ok(Some(s.clone())),
        (Ty::Str, Value::Number(n)) => Ok(Some(n.to_string())),
        (Ty::Long | Ty::Int, Value::Number(n)) => match n.as_i64() {
            Some(i) if i >= min && i <= max => Ok(Some(i.to_string())),
            _ => Err(()),
        },
        (Ty::Long | Ty::Int, Value::String(s)) => {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
                return Err(());
            }
            match s.parse::<i64>() {
                Ok(i) if i <= max => Ok(Some(i.to_string())),
                _ => Err(()),
            }
        }
        _ => Err(()),
    }
}

fn required(map: &HashMap<String, Value>, name: &str, ty: Ty) -> Result<String, ()> {
    field(map, name, ty)?.ok_or(())
}

fn fits(value: &str, chars: usize) -> bool {
    value.chars().count() <= chars
}

fn secs(ms: i64) -> Result<i64, ()> {
    let s = ms.div_euclid(1000);
    if (1..=2_147_483_647).contains(&s) {
        Ok(s)
    } else {
        Err(())
    }
}

/// A lifecycle event. Events with the same (ts, eventId) are ordered as SPEC §4 leaves open
/// and the engine decides: a delete after an add, two adds by their fields in this order.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Life {
    Add {
        event_type: String,
        wrong_id: String,
        user_id: String,
        question_id: String,
        subject: Option<String>,
        subject_name: Option<String>,
        pattern_id: Option<String>,
        chapter_id: Option<String>,
        question: Option<String>,
        collect: i64,
    },
    Delete,
}

/// A fix. Fixes with the same (fixTime, eventId) are ordered by these fields, in this order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Fix {
    ts: i64,
    event_type: String,
    fix_id: String,
    fix_result: i64,
}

/// (time in ms, eventId): what SPEC §4 orders events by.
type TimeAndId = (i64, String);

/// What the model makes of the messages: accepted/skipped/dead counts and the events.
#[derive(Default)]
pub struct Model {
    pub accepted: usize,
    pub skipped: usize,
    pub dead: usize,
    /// wrong_id → every lifecycle event ((ts, eventId), event); the greatest is the winner
    lives: BTreeMap<String, BTreeSet<(TimeAndId, Life)>>,
    /// wrong_id → every fix ((fixTime, eventId), fix); the greatest is the winner
    fixes: BTreeMap<String, BTreeSet<(TimeAndId, Fix)>>,
}

fn subject_names() -> HashMap<&'static str, &'static str> {
    [
        ("math", "数学"),
        ("chinese", "语文"),
        ("english", "英语"),
        ("physics", "物理"),
        ("chemistry", "化学"),
        ("biology", "生物"),
        ("history", "历史"),
        ("geography", "地理"),
        ("politics", "政治"),
    ]
    .into()
}

fn fix_result(text: &str) -> Option<i64> {
    match text {
        "1" | "correct" | "right" | "true" => Some(1),
        "0" | "wrong" | "incorrect" | "false" => Some(0),
        _ => None,
    }
}

impl Model {
    /// Feeds one message, with the generator's routing: add, fix and delete enabled;
    /// `wrongbook_review` disabled; `wrongbook_share` routed to a processor that does not exist.
    /// Returns the wrong id the message touches when it is accepted.
    pub fn feed(&mut self, raw: &[u8]) -> Option<String> {
        match self.classify(raw) {
            Ok(Some(wrong_id)) => {
                self.accepted += 1;
                Some(wrong_id)
            }
            Ok(None) => {
                self.skipped += 1;
                None
            }
            Err(()) => {
                self.dead += 1;
                None
            }
        }
    }

    /// Ok(Some(wrong id)) accepted, Ok(None) skipped, Err dead letter.
    fn classify(&mut self, raw: &[u8]) -> Result<Option<String>, ()> {
        let text = std::str::from_utf8(raw).map_err(|_| ())?;
        if text.contains("\\ud8") || text.contains("\\udc") {
            // The generator never writes surrogate escapes; anything else is not modelled.
            return Err(());
        }
        let top = object(serde_json::from_str::<Entries>(text).map_err(|_| ())?.0).ok_or(())?;
        let event_type = required(&top, "type", Ty::Str)?;
        let domain = required(&top, "domain", Ty::Str)?;
        let ts: i64 = required(&top, "timestamp", Ty::Long)?.parse().unwrap();
        let event_id = required(&top, "eventId", Ty::Str)?;
        if !matches!(top.get("payload"), Some(Value::Object(_))) {
            return Err(());
        }
        if domain != "wrongbook" {
            return Ok(None);
        }
        match event_type.as_str() {
            "wrongbook_review" => return Ok(None),
            "wrongbook_add" | "wrongbook_fix" | "wrongbook_delete" => {}
            _ => return Err(()),
        }
        // Re-parse the payload's text to see duplicate keys.
        let payload_text = extract_payload_text(text).ok_or(())?;
        let payload = object(
            serde_json::from_str::<Entries>(&payload_text)
                .map_err(|_| ())?
                .0,
        )
        .ok_or(())?;
        if !fits(&event_id, 100) || !fits(&event_type, 50) {
            return Err(());
        }
        let p = &payload;
        let touched;
        match event_type.as_str() {
            "wrongbook_add" => {
                let user_id = required(p, "userId", Ty::Str)?;
                let question_id = required(p, "questionId", Ty::Str)?;
                let wrong_record_id = field(p, "wrongRecordId", Ty::Str)?;
                let subject = field(p, "subject", Ty::Str)?;
                let subject_name_field = field(p, "subjectName", Ty::Str)?;
                let pattern_id = field(p, "patternId", Ty::Str)?;
                let chapter_id = field(p, "chapterId", Ty::Str)?;
                field(p, "chapterName", Ty::Str)?;
                let question = field(p, "question", Ty::Str)?;
                let wrong_time = field(p, "wrongTime", Ty::Long)?;
                let create_time = field(p, "createTime", Ty::Long)?;
                let wrong_id = wrong_record_id.unwrap_or_else(|| event_id.clone());
                let subject_name = subject_name_field.or_else(|| {
                    subject
                        .as_deref()
                        .and_then(|s| subject_names().get(s).map(|n| n.to_string()))
                });
                let collect_ms: i64 = wrong_time
                    .or(create_time)
                    .map(|t| t.parse().unwrap())
                    .unwrap_or(ts);
                let ok = fits(&wrong_id, 50)
                    && fits(&user_id, 50)
                    && fits(&question_id, 50)
                    && subject.as_deref().is_none_or(|s| fits(s, 20))
                    && subject_name.as_deref().is_none_or(|s| fits(s, 50))
                    && pattern_id.as_deref().is_none_or(|s| fits(s, 50))
                    && question.as_deref().is_none_or(|s| s.len() <= 65_535);
                if !ok {
                    return Err(());
                }
                let collect = secs(collect_ms)?;
                touched = wrong_id.clone();
                self.lives.entry(wrong_id.clone()).or_default().insert((
                    (ts, event_id),
                    Life::Add {
                        event_type,
                        wrong_id,
                        user_id,
                        question_id,
                        subject,
                        subject_name,
                        pattern_id,
                        chapter_id,
                        question,
                        collect,
                    },
                ));
            }
            "wrongbook_fix" => {
                required(p, "userId", Ty::Str)?;
                required(p, "questionId", Ty::Str)?;
                let wrong_id = required(p, "wrongRecordId", Ty::Str)?;
                let fix_time: i64 = required(p, "fixTime", Ty::Long)?.parse().unwrap();
                let result = required(p, "fixResult", Ty::Str)?;
                let fix_id = field(p, "fixId", Ty::Str)?;
                field(p, "attempts", Ty::Int)?;
                field(p, "timeCost", Ty::Long)?;
                let fix_id = fix_id.unwrap_or_else(|| event_id.clone());
                if !fits(&wrong_id, 50) || !fits(&fix_id, 50) {
                    return Err(());
                }
                secs(fix_time)?;
                let fix_result = fix_result(&result).ok_or(())?;
                touched = wrong_id.clone();
                self.fixes.entry(wrong_id).or_default().insert((
                    (fix_time, event_id),
                    Fix {
                        ts,
                        event_type,
                        fix_id,
                        fix_result,
                    },
                ));
            }
            _ => {
                required(p, "userId", Ty::Str)?;
                required(p, "questionId", Ty::Str)?;
                let wrong_id = required(p, "wrongRecordId", Ty::Str)?;
                field(p, "deleteTime", Ty::Long)?;
                touched = wrong_id.clone();
                self.lives
                    .entry(wrong_id)
                    .or_default()
                    .insert(((ts, event_id), Life::Delete));
            }
        }
        Ok(Some(touched))
    }

    /// The wide table the events and `dims` compute, by id.
    pub fn table(&self, dims: &DimSnapshot) -> BTreeMap<i64, Row> {
        let mut by_id: BTreeMap<i64, (String, Row)> = BTreeMap::new();
        for (wrong_id, lives) in &self.lives {
            let ((add_ts, add_event_id), life) = lives.iter().next_back().unwrap();
            let Life::Add {
                event_type,
                user_id,
                question_id,
                subject,
                subject_name,
                pattern_id,
                chapter_id,
                question,
                collect,
                ..
            } = life
            else {
                continue;
            };
            let fix = self.fixes.get(wrong_id).and_then(|f| f.iter().next_back());
            let (event_id, ev_type) = match fix {
                Some(((_, fix_event_id), f)) if f.ts >= *add_ts => {
                    (fix_event_id.clone(), f.event_type.clone())
                }
                _ => (add_event_id.clone(), event_type.clone()),
            };
            let pattern_name = pattern_id.as_ref().and_then(|p| {
                dims.patterns
                    .iter()
                    .find(|row| &row.id == p)
                    .and_then(|row| row.name.clone())
            });
            let mut best: Option<(Option<i64>, i64, Option<String>)> = None;
            if let Some(p) = pattern_id {
                for link in &dims.teaching_type_pts {
                    if link.pt_id.as_ref() != Some(p) || link.is_delete != Some(0) {
                        continue;
                    }
                    for tt in &dims.teaching_types {
                        if Some(tt.id) != link.teaching_type_id || tt.is_delete != Some(0) {
                            continue;
                        }
                        if chapter_id.is_some() && tt.chapter_id != *chapter_id {
                            continue;
                        }
                        let candidate = (link.order_num, tt.id, tt.name.clone());
                        if best
                            .as_ref()
                            .is_none_or(|b| (candidate.0, candidate.1) < (b.0, b.1))
                        {
                            best = Some(candidate);
                        }
                    }
                }
            }
            let id = reference_id(wrong_id);
            let row: Row = vec![
                Some(id.to_string()),
                Some(wrong_id.clone()),
                Some(user_id.clone()),
                subject.clone(),
                subject_name.clone(),
                Some(question_id.clone()),
                question.clone(),
                pattern_id.clone(),
                pattern_name,
                best.as_ref().map(|b| b.1.to_string()),
                best.and_then(|b| b.2),
                Some(collect.to_string()),
                fix.map(|(_, f)| f.fix_id.clone()),
                fix.map(|((t, _), _)| t.div_euclid(1000).to_string()),
                fix.map(|(_, f)| f.fix_result.to_string()),
                fix.map(|(_, f)| {
                    if f.fix_result == 1 {
                        "订正"
                    } else {
                        "未订正"
                    }
                    .to_string()
                }),
                Some(event_id),
                Some(ev_type),
            ];
            // Two wrong ids on one id: the least wrong id is shown.
            match by_id.get(&id) {
                Some((other, _)) if other < wrong_id => {}
                _ => {
                    by_id.insert(id, (wrong_id.clone(), row));
                }
            }
        }
        by_id.into_iter().map(|(id, (_, row))| (id, row)).collect()
    }
}

/// The payload object's text, found by a naive scan (the model's own, not the engine's).
fn extract_payload_text(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    let start = text.find("\"payload\"")?;
    let rest = &text[start + 9..];
    let open = rest.find('{')?;
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in rest[open..].char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let candidate = &rest[open..open + i + 1];
                    let parsed: Value = serde_json::from_str(candidate).ok()?;
                    return (Some(&parsed) == value.get("payload")).then(|| candidate.to_owned());
                }
            }
            _ => {}
        }
    }
    None
}

/// SPEC §6's id rule, written again for the model.
pub fn reference_id(wrong_id: &str) -> i64 {
    if !wrong_id.is_empty() && wrong_id.chars().all(|c| c.is_ascii_digit()) {
        let digits = wrong_id.trim_start_matches('0');
        if digits.is_empty() {
            return 0;
        }
        if let Ok(v) = digits.parse::<i64>() {
            return v;
        }
    }
    (xxhash_rust::xxh3::xxh3_64(wrong_id.as_bytes()) & (u64::MAX >> 1)) as i64
}

/// The model's table for `messages` under `dims`.
pub fn reference(messages: &[Vec<u8>], dims: &DimSnapshot) -> (Model, BTreeMap<i64, Row>) {
    let mut model = Model::default();
    for m in messages {
        model.feed(m);
    }
    let table = model.table(dims);
    (model, table)
}
