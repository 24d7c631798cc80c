//! Processors: a routed, schema-checked event becomes a [`KeyedOp`] on one wrong record, keyed
//! by the record's wide-table id (SPEC §4, §6). This is where the processor kinds' meaning
//! lives: which slots an add, a fix or a delete reads, the subject-name fallback, the
//! fix_result mapping, and the column limits that make a value a dead letter instead of a
//! truncated row.

use std::borrow::Cow;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::dataflow::event_type::EventType;
use crate::dataflow::owner::OpsByOwner;
use crate::dataflow::route::CompiledRoute;
use crate::event::{decimal, Decimal, Envelope, FieldValue, Fields, Reason, Rejection};
use crate::schema::{check_fits, TIMESTAMP_RANGE};
use crate::spec::{ProcessorKind, Slot, Spec};

/// What orders a record's lifecycle events: event time, then event id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventStamp {
    pub timestamp: i64,
    pub event_id: CompactString,
}

/// A record as its add describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AddEvent {
    pub stamp: EventStamp,
    /// Interned: shared by every event of the type.
    pub event_type: EventType,
    pub wrong_id: CompactString,
    pub user_id: CompactString,
    pub question_id: CompactString,
    pub subject: Option<CompactString>,
    /// The add's `subjectName`, else the spec's name for `subject`.
    pub subject_name: Option<CompactString>,
    pub pattern_id: Option<CompactString>,
    pub chapter_id: Option<CompactString>,
    pub question: Option<CompactString>,
    /// `wrongTime`, else `createTime`, else the event time; whole seconds.
    pub collect_time: i64,
}

/// A fix of a record (whose wrong id the operation carries: a stored fix does not repeat it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FixEvent {
    /// `fix_time` (ms) first: the latest fix is the greatest by (`fixTime`, `eventId`).
    pub fix_time_ms: i64,
    pub stamp: EventStamp,
    /// Interned: shared by every event of the type.
    pub event_type: EventType,
    /// `fixId`, else the event id.
    pub fix_id: CompactString,
    pub fix_result: i64,
}

impl FixEvent {
    /// The order of fixes of one record: by (`fixTime`, `eventId`) as SPEC §4 says, then by
    /// the rest of the fix, so that two different fixes never tie and the latest does not
    /// depend on arrival order.
    pub fn order_key(&self) -> (i64, &str, i64, &str, &str, i64) {
        (
            self.fix_time_ms,
            &self.stamp.event_id,
            self.stamp.timestamp,
            self.event_type.as_str(),
            &self.fix_id,
            self.fix_result,
        )
    }
}

/// A delete of a record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeleteEvent {
    pub stamp: EventStamp,
    pub wrong_id: CompactString,
}

/// One event's effect on a record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordOp {
    Add(AddEvent),
    Fix {
        wrong_id: CompactString,
        fix: FixEvent,
    },
    Delete(DeleteEvent),
}

impl RecordOp {
    pub fn wrong_id(&self) -> &str {
        match self {
            RecordOp::Add(a) => &a.wrong_id,
            RecordOp::Fix { wrong_id, .. } => wrong_id,
            RecordOp::Delete(d) => &d.wrong_id,
        }
    }
}

/// A record operation and the wide-table id of its record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyedOp {
    pub id: u64,
    pub op: RecordOp,
    /// Whether the rows it touches are written. A replay of a range reads earlier events only
    /// to rebuild state: their operations carry `false`.
    pub write: bool,
}

/// The wide-table id of `wrong_id` (SPEC §6): the number itself when it is a decimal integer
/// in [0, 2^63) (ASCII digits, leading zeros allowed), else `xxh3_64(wrong_id) & (2^63 - 1)`.
pub fn wide_id(wrong_id: &str) -> u64 {
    const MAX: u64 = (1 << 63) - 1;
    match decimal(wrong_id.as_bytes()) {
        Decimal::Value(value) if value <= MAX => value,
        _ => xxhash_rust::xxh3::xxh3_64(wrong_id.as_bytes()) & MAX,
    }
}

/// Runs `route`'s processor on a validated event, adding its operation to `into`.
pub fn process(
    route: &CompiledRoute,
    envelope: &Envelope<'_>,
    fields: &Fields<'_>,
    spec: &Spec,
    into: &mut OpsByOwner,
) -> Result<(), Rejection> {
    let slots = SlotValues { route, fields };
    let stamp = EventStamp {
        timestamp: envelope.timestamp,
        event_id: fitting("event_id", &envelope.event_id)?,
    };
    check_fits("event_type", &route.event_type)
        .map_err(|e| Rejection::new(Reason::ValueTooLong, e))?;
    let event_type = route.event_type;
    // Each arm places its operation with one expression, so that the operation (some 270
    // bytes) is built where it is pushed instead of being moved there through temporaries.
    match route.kind {
        ProcessorKind::Add => {
            let wrong_id = match slots.text(Slot::WrongRecordId)? {
                Some(id) => id,
                None => Cow::Borrowed(envelope.event_id.as_ref()),
            };
            let subject = slots.text(Slot::Subject)?;
            let subject_name = match slots.text(Slot::SubjectName)? {
                Some(name) => Some(name),
                None => subject
                    .as_deref()
                    .and_then(|s| spec.subject_names.get(s))
                    .map(|name| Cow::Borrowed(name.as_str())),
            };
            let collect_ms = match slots.time(Slot::WrongTime)? {
                Some(t) => t,
                None => slots.time(Slot::CreateTime)?.unwrap_or(envelope.timestamp),
            };
            let wrong_id = fitting("wrong_id", &wrong_id)?;
            into.push(KeyedOp {
                id: wide_id(&wrong_id),
                op: RecordOp::Add(AddEvent {
                    wrong_id,
                    user_id: fitting("user_id", &slots.required_text(Slot::UserId)?)?,
                    question_id: fitting("question_id", &slots.required_text(Slot::QuestionId)?)?,
                    subject: optional_fitting("subject", subject)?,
                    subject_name: optional_fitting("subject_name", subject_name)?,
                    pattern_id: optional_fitting("pattern_id", slots.text(Slot::PatternId)?)?,
                    chapter_id: slots
                        .text(Slot::ChapterId)?
                        .map(|c| CompactString::from(c.as_ref())),
                    question: optional_fitting("question", slots.text(Slot::Question)?)?,
                    collect_time: timestamp_seconds("collect_time", collect_ms)?,
                    stamp,
                    event_type,
                }),
                write: true,
            });
        }
        ProcessorKind::Fix => {
            let wrong_id = fitting("wrong_id", &slots.required_text(Slot::WrongRecordId)?)?;
            let fix_time_ms = slots
                .time(Slot::FixTime)?
                .ok_or_else(|| slots.missing(Slot::FixTime))?;
            timestamp_seconds("fix_time", fix_time_ms)?;
            let result_text = slots.required_text(Slot::FixResult)?;
            let fix_result = *spec.fix_results.get(result_text.as_ref()).ok_or_else(|| {
                let shown: String = result_text.chars().take(40).collect();
                Rejection::new(
                    Reason::UnknownFixResult,
                    format!("fixResult `{shown}` is not in the spec's fix_results"),
                )
            })?;
            let fix_id = match slots.text(Slot::FixId)? {
                Some(id) => id,
                None => Cow::Borrowed(envelope.event_id.as_ref()),
            };
            let fix_id = fitting("fix_id", &fix_id)?;
            into.push(KeyedOp {
                id: wide_id(&wrong_id),
                op: RecordOp::Fix {
                    wrong_id,
                    fix: FixEvent {
                        fix_time_ms,
                        fix_id,
                        fix_result,
                        stamp,
                        event_type,
                    },
                },
                write: true,
            });
        }
        ProcessorKind::Delete => {
            let wrong_id = CompactString::from(slots.required_text(Slot::WrongRecordId)?.as_ref());
            into.push(KeyedOp {
                id: wide_id(&wrong_id),
                op: RecordOp::Delete(DeleteEvent { wrong_id, stamp }),
                write: true,
            });
        }
    }
    Ok(())
}

/// Slot values of one event, read through the route's slot → field map.
///
/// Its readers, and the column checks below, are always inlined into [`process`]: as calls
/// (which the compiler made of them once the release build was optimized as one unit) they
/// cost ~20 instructions each, a dozen times per event; their error paths stay out of line.
struct SlotValues<'r, 'f, 'a> {
    route: &'r CompiledRoute,
    fields: &'f Fields<'a>,
}

impl<'f, 'a> SlotValues<'_, 'f, 'a> {
    #[inline(always)]
    fn value(&self, slot: Slot) -> Option<&'f FieldValue<'a>> {
        self.route.slots[slot as usize].and_then(|i| self.fields[i].as_ref())
    }

    fn missing(&self, slot: Slot) -> Rejection {
        let field = self.route_field(slot);
        Rejection::new(
            Reason::MissingField,
            format!(
                "`payload.{field}` is missing ({} needs it)",
                self.route.processor
            ),
        )
    }

    fn route_field(&self, slot: Slot) -> String {
        self.route.slots[slot as usize]
            .map(|i| self.route.schema.fields()[i].name.clone())
            .unwrap_or_else(|| format!("<{slot:?} not in the {} schema>", self.route.event_type))
    }

    /// A text value, borrowed from the fields (a decoded string is not copied again).
    #[inline(always)]
    fn text(&self, slot: Slot) -> Result<Option<Cow<'f, str>>, Rejection> {
        Ok(match self.value(slot) {
            None => None,
            Some(FieldValue::Text(t)) => Some(Cow::Borrowed(t.as_ref())),
            Some(FieldValue::Int(i)) => Some(Cow::Owned(i.to_string())),
        })
    }

    #[inline(always)]
    fn required_text(&self, slot: Slot) -> Result<Cow<'f, str>, Rejection> {
        self.text(slot)?.ok_or_else(|| self.missing(slot))
    }

    #[inline(always)]
    fn time(&self, slot: Slot) -> Result<Option<i64>, Rejection> {
        match self.value(slot) {
            None => Ok(None),
            Some(FieldValue::Int(i)) => Ok(Some(*i)),
            Some(FieldValue::Text(t)) => t.parse().map(Some).map_err(|_| {
                Rejection::new(
                    Reason::InvalidField,
                    format!("`payload.{}` is not a time", self.route_field(slot)),
                )
            }),
        }
    }
}

#[inline(always)]
fn fitting(column: &str, value: &str) -> Result<CompactString, Rejection> {
    check_fits(column, value).map_err(|e| Rejection::new(Reason::ValueTooLong, e))?;
    Ok(CompactString::from(value))
}

#[inline(always)]
fn optional_fitting(
    column: &str,
    value: Option<Cow<'_, str>>,
) -> Result<Option<CompactString>, Rejection> {
    // A match rather than `map` and `transpose`, whose closure the compiler kept as a call.
    match value {
        Some(value) => fitting(column, &value).map(Some),
        None => Ok(None),
    }
}

/// Milliseconds as whole seconds, when a TIMESTAMP column can hold them.
#[inline(always)]
fn timestamp_seconds(column: &str, ms: i64) -> Result<i64, Rejection> {
    let seconds = ms.div_euclid(1000);
    if TIMESTAMP_RANGE.contains(&seconds) {
        Ok(seconds)
    } else {
        Err(time_out_of_range(column, ms))
    }
}

#[cold]
fn time_out_of_range(column: &str, ms: i64) -> Rejection {
    Rejection::new(
        Reason::TimeOutOfRange,
        format!("`{column}` {ms} ms is outside 1970-01-01 00:00:01 .. 2038-01-19 03:14:07 UTC"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_decimal_rule_else_xxh3() {
        assert_eq!(wide_id("123"), 123);
        assert_eq!(wide_id("000123"), 123);
        assert_eq!(wide_id("0"), 0);
        assert_eq!(wide_id("000"), 0);
        assert_eq!(wide_id("9223372036854775807"), 9_223_372_036_854_775_807);
        let over = "9223372036854775808";
        assert_eq!(
            wide_id(over),
            xxhash_rust::xxh3::xxh3_64(over.as_bytes()) & ((1 << 63) - 1)
        );
        assert_eq!(
            wide_id("w-1"),
            xxhash_rust::xxh3::xxh3_64(b"w-1") & ((1 << 63) - 1)
        );
        assert_eq!(
            wide_id("00009223372036854775807"),
            9_223_372_036_854_775_807
        );
        let past_u64 = "18446744073709551616";
        assert_eq!(
            wide_id(past_u64),
            xxhash_rust::xxh3::xxh3_64(past_u64.as_bytes()) & ((1 << 63) - 1)
        );
        assert_ne!(wide_id("+1"), 1);
        assert_ne!(wide_id("1 "), 1);
        assert_ne!(wide_id("١٢"), 12);
        assert!(wide_id("") < 1 << 63);
    }
}
