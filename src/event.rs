//! `BusinessEvent` parsing and validation (SPEC §2): raw message bytes become a typed envelope
//! and schema-checked payload fields, or a [`Rejection`] with a reason class.
//!
//! Parsing borrows from the message ([`crate::json::Scanner`]): field values are slices of the
//! input unless they carry escapes, and unknown fields are skipped without building a JSON tree.
//! Nothing a message holds can panic this module; every failure is a value.

use std::borrow::Cow;
use std::fmt;

use crate::json::{Scanner, SyntaxError, Value};
use crate::spec::{EventSchema, FieldSpec, FieldType};

/// Why a message is a dead letter. The names are stable: they appear in the dead-letter output,
/// in summaries and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Longer than `engine.max_message_bytes`.
    MessageTooLarge,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not RFC 8259 JSON (syntax, NaN, comments, trailing commas, lone surrogates, nesting).
    InvalidJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// The same key twice in one object.
    DuplicateKey,
    /// A required envelope or payload field is absent or null.
    MissingField,
    /// A field has the wrong type or a number out of range.
    InvalidField,
    /// No routing row names the event's type.
    UnknownType,
    /// The route names a processor the dataflow spec does not know.
    UnknownProcessor,
    /// The route's type has no payload schema in the dataflow spec.
    NoSchema,
    /// A fix's result is not in the spec's `fix_results`.
    UnknownFixResult,
    /// A value is longer than its wide-table column.
    ValueTooLong,
    /// A time outside what the wide table's TIMESTAMP columns hold.
    TimeOutOfRange,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::MessageTooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::DuplicateKey,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::UnknownType,
        Reason::UnknownProcessor,
        Reason::NoSchema,
        Reason::UnknownFixResult,
        Reason::ValueTooLong,
        Reason::TimeOutOfRange,
    ];

    /// The reason's stable name (`invalid_json`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MessageTooLarge => "message_too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::DuplicateKey => "duplicate_key",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::UnknownType => "unknown_type",
            Reason::UnknownProcessor => "unknown_processor",
            Reason::NoSchema => "no_schema",
            Reason::UnknownFixResult => "unknown_fix_result",
            Reason::ValueTooLong => "value_too_long",
            Reason::TimeOutOfRange => "time_out_of_range",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that cannot be processed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// The envelope of a `BusinessEvent`, borrowed from the message.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub domain: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    /// Event time, ms since the epoch.
    pub timestamp: i64,
    pub event_id: Cow<'a, str>,
    /// The payload object, read in the same pass (its fields are checked then or by
    /// [`Payload::validate`]).
    pub payload: Payload<'a>,
}

/// A payload object as parsing left it: read straight into its schema's fields when the
/// schema was known by the time the payload came (the message's domain and type came before
/// it, as in the seed's field order), else its entries in message order, values decoded
/// (nested objects and arrays as raw text), for [`Payload::validate`] to check once the type
/// is known. Duplicate keys are refused either way.
#[derive(Debug, Default)]
pub struct Payload<'a> {
    entries: Vec<Entry<'a>>,
    /// The fields by the schema (filled when `checked` is `Some(Ok(()))`).
    fields: Fields<'a>,
    /// What checking the payload as it was read found, if it was.
    checked: Option<Result<(), Rejection>>,
}

impl<'a> Payload<'a> {
    /// Checks the payload against its type's schema and returns the values in schema order.
    /// Fields the schema does not name are ignored. `schema` must be the schema that
    /// [`ParseBuffers::parse_envelope`]'s `schema_of` gave for this message, if it gave one.
    #[inline]
    pub fn validate(&mut self, schema: &EventSchema) -> Result<Fields<'a>, Rejection> {
        let fields = std::mem::take(&mut self.fields);
        match self.checked.take() {
            Some(checked) => checked.map(|()| fields),
            None => validate_entries(schema, &mut self.entries, fields),
        }
    }
}

/// One entry of a payload object: its key and its value.
pub type Entry<'a> = (Cow<'a, str>, Value<'a>);

/// A message as the parser takes it: its bytes, or its text when they are already known to be
/// UTF-8 (a batch's messages are checked together, see [`crate::source::SourceBatch::messages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMessage<'a> {
    /// Bytes not checked yet.
    Bytes(&'a [u8]),
    /// Bytes checked to be UTF-8.
    Text(&'a str),
}

impl<'a> RawMessage<'a> {
    /// The message's bytes, checked or not (what a dead letter keeps).
    pub fn bytes(self) -> &'a [u8] {
        match self {
            RawMessage::Bytes(bytes) => bytes,
            RawMessage::Text(text) => text.as_bytes(),
        }
    }
}

impl<'a> From<&'a [u8]> for RawMessage<'a> {
    fn from(bytes: &'a [u8]) -> RawMessage<'a> {
        RawMessage::Bytes(bytes)
    }
}

/// `raw` as text, or the rejection of invalid UTF-8 with the place of the error.
fn utf8(raw: &[u8]) -> Result<&str, Rejection> {
    // simdutf8 checks valid text several times faster than std; std finds the error's place.
    simdutf8::basic::from_utf8(raw).or_else(|_| {
        std::str::from_utf8(raw).map_err(|e| {
            Rejection::new(
                Reason::InvalidUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })
    })
}

/// The vectors parsing fills for each message, kept by a worker from one message to the next
/// so that the usual message allocates none: a payload's entries and its validated fields.
/// They are empty between messages; each message fills them with values borrowed from itself.
#[derive(Debug, Default)]
pub struct ParseBuffers {
    entries: Vec<Entry<'static>>,
    fields: Vec<Option<FieldValue<'static>>>,
}

impl ParseBuffers {
    /// Parses a message's envelope (see [`parse_envelope`]) into the kept vectors. When the
    /// domain and type come before the payload, `schema_of(domain, type)` is asked for the
    /// payload's schema, and a payload it gives one for is checked as it is read.
    pub fn parse_envelope<'a, 's>(
        &mut self,
        raw: impl Into<RawMessage<'a>>,
        max_bytes: usize,
        schema_of: impl FnMut(&str, &str) -> Option<&'s EventSchema>,
    ) -> Result<Envelope<'a>, Rejection> {
        parse_envelope_into(
            raw.into(),
            max_bytes,
            Payload {
                entries: recycle(std::mem::take(&mut self.entries)),
                fields: recycle(std::mem::take(&mut self.fields)),
                checked: None,
            },
            schema_of,
        )
    }

    /// Takes back a message's vectors once it is done with its payload (the fields vector
    /// only if [`Payload::validate`] did not take it out).
    #[inline]
    pub fn keep_payload(&mut self, payload: Payload<'_>) {
        self.entries = recycle(payload.entries);
        if payload.fields.capacity() > 0 {
            self.fields = recycle(payload.fields);
        }
    }

    /// Takes back a message's fields vector once it is done with its fields.
    pub fn keep_fields(&mut self, fields: Fields<'_>) {
        self.fields = recycle(fields);
    }
}

/// `vec`'s allocation, emptied, as a vector of another type of the same layout (here: the
/// same values borrowing from another message). The standard library collects a mapped
/// `vec::IntoIter` in place when the layouts match; where it does not, this merely allocates.
fn recycle<A, B>(mut vec: Vec<A>) -> Vec<B> {
    vec.clear();
    vec.into_iter()
        .map(|_| unreachable!("the vector was emptied"))
        .collect()
}

/// A validated payload value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Text(Cow<'a, str>),
    Int(i64),
}

/// Payload values in schema order: `fields[i]` is the schema's field `i`, `None` when absent.
pub type Fields<'a> = Vec<Option<FieldValue<'a>>>;

/// Parses the envelope of a message: UTF-8, RFC 8259 JSON, an object, the four envelope fields
/// typed per SPEC §2 and a payload object (its fields are checked by [`Payload::validate`]).
///
/// The whole message is validated in one pass, and the payload's entries read in it. A syntax
/// error anywhere, or a key the envelope holds twice, outranks a wrong field: the first found of
/// those is the reason, else the first wrong field in message order, else the first missing
/// field. (Keys the payload holds twice are refused by [`Payload::validate`], and so are its
/// wrong fields, which rank below the envelope's.)
pub fn parse_envelope(raw: &[u8], max_bytes: usize) -> Result<Envelope<'_>, Rejection> {
    parse_envelope_into(raw.into(), max_bytes, Payload::default(), |_, _| None)
}

/// [`ParseBuffers::parse_envelope`], the payload read into `payload`'s vectors (emptied
/// first).
fn parse_envelope_into<'a, 's>(
    raw: RawMessage<'a>,
    max_bytes: usize,
    mut payload: Payload<'a>,
    mut schema_of: impl FnMut(&str, &str) -> Option<&'s EventSchema>,
) -> Result<Envelope<'a>, Rejection> {
    payload.entries.clear();
    let bytes = raw.bytes();
    if bytes.len() > max_bytes {
        return Err(Rejection::new(
            Reason::MessageTooLarge,
            format!("{} bytes, more than the limit of {max_bytes}", bytes.len()),
        ));
    }
    let text = match raw {
        RawMessage::Text(text) => text,
        RawMessage::Bytes(bytes) => utf8(bytes)?,
    };
    let mut scanner = Scanner::new(text);
    if !matches!(scanner.peek(), Some(b'{') | None) {
        return Err(match scanner.skip_value().and_then(|_| scanner.end()) {
            Ok(()) => Rejection::new(Reason::NotAnObject, "the message is not a JSON object"),
            Err(e) => syntax(e),
        });
    }
    let mut domain: Option<Cow<'a, str>> = None;
    let mut event_type: Option<Cow<'a, str>> = None;
    let mut timestamp = None;
    let mut event_id = None;
    // Whether the payload is an object (read into `payload`); `None` when absent or null.
    let mut payload_is_object: Option<bool> = None;
    let mut wrong_field: Option<Rejection> = None;
    let mut keys = KeySet::default();
    scanner.begin_object().map_err(syntax)?;
    while let Some(key) = scanner.next_key().map_err(syntax)? {
        let known = match key.as_ref() {
            "domain" => Some(0),
            "type" => Some(1),
            "timestamp" => Some(2),
            "eventId" => Some(3),
            "payload" => Some(4),
            _ => None,
        };
        keys.insert(known, key)?;
        let Some(slot) = known else {
            scanner.skip_value().map_err(syntax)?;
            continue;
        };
        if slot == 4 && scanner.peek() == Some(b'{') {
            let schema = match (&domain, &event_type) {
                (Some(domain), Some(event_type)) => schema_of(domain.as_ref(), event_type.as_ref()),
                _ => None,
            };
            match schema {
                Some(schema) => {
                    let checked = read_payload(&mut scanner, schema, &mut payload.fields);
                    payload.checked = Some(checked.map_err(syntax)?);
                }
                None => scanner
                    .object_entries(&mut payload.entries)
                    .map_err(syntax)?,
            }
            payload_is_object = Some(true);
            continue;
        }
        let value = scanner.value().map_err(syntax)?;
        if wrong_field.is_some() {
            continue;
        }
        let checked = match slot {
            0 => string_field(value, FieldPath::envelope("domain")).map(|v| domain = v),
            1 => string_field(value, FieldPath::envelope("type")).map(|v| event_type = v),
            2 => long_field(value, FieldPath::envelope("timestamp"), FieldType::Long)
                .map(|v| timestamp = v),
            3 => string_field(value, FieldPath::envelope("eventId")).map(|v| event_id = v),
            _ => {
                payload_is_object = (value != Value::Null).then_some(false);
                Ok(())
            }
        };
        wrong_field = checked.err();
    }
    scanner.end().map_err(syntax)?;
    if let Some(rejection) = wrong_field {
        return Err(rejection);
    }
    let missing = |name: &str| Rejection::new(Reason::MissingField, format!("`{name}` is missing"));
    if !payload_is_object.ok_or_else(|| missing("payload"))? {
        return Err(Rejection::new(
            Reason::InvalidField,
            "`payload` is not an object",
        ));
    }
    Ok(Envelope {
        domain: domain.ok_or_else(|| missing("domain"))?,
        event_type: event_type.ok_or_else(|| missing("type"))?,
        timestamp: timestamp.ok_or_else(|| missing("timestamp"))?,
        event_id: event_id.ok_or_else(|| missing("eventId"))?,
        payload,
    })
}

/// [`Payload::validate`] of a payload read as entries, the values moved out of `entries` into
/// `fields` (emptied first).
fn validate_entries<'a>(
    schema: &EventSchema,
    entries: &mut Vec<Entry<'a>>,
    mut fields: Fields<'a>,
) -> Result<Fields<'a>, Rejection> {
    fields.clear();
    fields.resize_with(schema.fields().len(), || None);
    let mut keys = KeySet::default();
    for (key, value) in entries.drain(..) {
        if let Some(index) = keys.field_of(schema, key)? {
            fields[index] = typed_field(&schema.fields()[index], value)?;
        }
    }
    check_required(schema, &fields)?;
    Ok(fields)
}

/// Reads the payload object at the cursor straight into `fields` (emptied first) by its
/// schema, with the outcome [`validate_entries`] has on the same entries. The outer result is
/// a syntax error; the inner one the payload's first wrong field or repeated key, after which
/// the rest of the object is only scanned (so that a syntax error further on outranks it), or
/// else its first missing field.
fn read_payload<'a>(
    scanner: &mut Scanner<'a>,
    schema: &EventSchema,
    fields: &mut Fields<'a>,
) -> Result<Result<(), Rejection>, SyntaxError> {
    fields.clear();
    fields.resize_with(schema.fields().len(), || None);
    let mut keys = KeySet::default();
    let mut wrong = None;
    scanner.object_with(|scanner, key| {
        if wrong.is_some() {
            return scanner.skip_value();
        }
        let index = match keys.field_of(schema, key) {
            Ok(Some(index)) => index,
            Ok(None) => return scanner.skip_value(),
            Err(rejection) => {
                wrong = Some(rejection);
                return scanner.skip_value();
            }
        };
        match typed_field(&schema.fields()[index], scanner.value()?) {
            Ok(value) => fields[index] = value,
            Err(rejection) => wrong = Some(rejection),
        }
        Ok(())
    })?;
    Ok(match wrong {
        Some(rejection) => Err(rejection),
        None => check_required(schema, fields),
    })
}

/// A payload value by its field's type rule.
#[inline(always)]
fn typed_field<'a>(
    spec: &FieldSpec,
    value: Value<'a>,
) -> Result<Option<FieldValue<'a>>, Rejection> {
    let path = FieldPath::payload(&spec.name);
    Ok(match spec.ty {
        FieldType::String => string_field(value, path)?.map(FieldValue::Text),
        ty @ (FieldType::Long | FieldType::Integer) => {
            long_field(value, path, ty)?.map(FieldValue::Int)
        }
    })
}

/// The first of the schema's required fields that `fields` lacks, as a rejection.
fn check_required(schema: &EventSchema, fields: &Fields<'_>) -> Result<(), Rejection> {
    for (spec, value) in schema.fields().iter().zip(fields) {
        if spec.required && value.is_none() {
            return Err(Rejection::new(
                Reason::MissingField,
                format!("`payload.{}` is missing", spec.name),
            ));
        }
    }
    Ok(())
}

fn syntax(e: SyntaxError) -> Rejection {
    Rejection::new(Reason::InvalidJson, e.to_string())
}

/// The keys of one object seen so far, to refuse a key seen twice: the keys a reader knows by
/// index in a bit set, the others (rare: a key no schema names) by name in a vector, which
/// allocates only when the first such key comes.
#[derive(Default)]
struct KeySet<'a> {
    known: u64,
    others: Vec<Cow<'a, str>>,
}

impl<'a> KeySet<'a> {
    /// The field `schema` gives payload key `key` (`None`: one it does not name), or a
    /// rejection if the object held the key already: the one rule for a payload's keys,
    /// however the payload is read.
    #[inline(always)]
    fn field_of(
        &mut self,
        schema: &EventSchema,
        key: Cow<'a, str>,
    ) -> Result<Option<usize>, Rejection> {
        let index = schema.field_index(&key);
        self.insert(index, key)?;
        Ok(index)
    }

    #[inline]
    fn insert(&mut self, index: Option<usize>, key: Cow<'a, str>) -> Result<(), Rejection> {
        match index {
            Some(i) if i < 64 && self.known & (1 << i) == 0 => {
                self.known |= 1 << i;
                Ok(())
            }
            _ => self.insert_other(index, key),
        }
    }

    /// A known key seen before, or a key not known by an index below 64 (kept by name).
    #[inline(never)]
    fn insert_other(&mut self, index: Option<usize>, key: Cow<'a, str>) -> Result<(), Rejection> {
        let seen = match index {
            Some(i) if i < 64 => true,
            _ => self.others.contains(&key),
        };
        if seen {
            let shown: String = key.chars().take(80).collect();
            return Err(Rejection::new(
                Reason::DuplicateKey,
                format!("key `{shown}`"),
            ));
        }
        self.others.push(key);
        Ok(())
    }
}

/// Where a field is, for messages: formatted only when a message is needed.
#[derive(Clone, Copy)]
struct FieldPath<'s> {
    payload: bool,
    name: &'s str,
}

impl<'s> FieldPath<'s> {
    fn envelope(name: &'s str) -> FieldPath<'s> {
        FieldPath {
            payload: false,
            name,
        }
    }

    fn payload(name: &'s str) -> FieldPath<'s> {
        FieldPath {
            payload: true,
            name,
        }
    }
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.payload {
            f.write_str("payload.")?;
        }
        f.write_str(self.name)
    }
}

/// The String rule: a JSON string, or a number as its decimal text; null is absent.
///
/// The usual value, a string, is taken inline; the rest of the rule is a call (as calls,
/// the envelope's three string fields cost ~30 instructions each).
#[inline(always)]
fn string_field<'a>(
    value: Value<'a>,
    path: FieldPath<'_>,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match value {
        Value::String(s) => Ok(Some(s)),
        other => other_string_field(other, path),
    }
}

/// [`string_field`] of a value that is not a string.
#[inline(never)]
fn other_string_field<'a>(
    value: Value<'a>,
    path: FieldPath<'_>,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number {
            text,
            integer: true,
            ..
        } => Ok(Some(Cow::Borrowed(text))),
        Value::Number { text, .. } => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Some(Cow::Owned(f.to_string()))),
            _ => Err(Rejection::new(
                Reason::InvalidField,
                format!("`{path}`: number `{text}` has no finite decimal form"),
            )),
        },
        other => Err(Rejection::new(
            Reason::InvalidField,
            format!("`{path}`: expected a string, got {}", other.kind()),
        )),
    }
}

/// The Long and Integer rules: a JSON integer, or a string of decimal digits, within range;
/// null is absent.
///
/// An integer literal within range, whose value the scanner read already, is taken inline;
/// the rest of the rule is a call.
#[inline(always)]
fn long_field(
    value: Value<'_>,
    path: FieldPath<'_>,
    ty: FieldType,
) -> Result<Option<i64>, Rejection> {
    if let Value::Number { value: Some(v), .. } = value {
        if ty == FieldType::Long || i32::try_from(v).is_ok() {
            return Ok(Some(v));
        }
    }
    other_long_field(value, path, ty)
}

/// [`long_field`] of a value that is not an integer literal within range.
#[inline(never)]
fn other_long_field(
    value: Value<'_>,
    path: FieldPath<'_>,
    ty: FieldType,
) -> Result<Option<i64>, Rejection> {
    let (min, max, name) = match ty {
        FieldType::Integer => (i64::from(i32::MIN), i64::from(i32::MAX), "Integer"),
        _ => (i64::MIN, i64::MAX, "Long"),
    };
    let invalid = |what: String| Rejection::new(Reason::InvalidField, format!("`{path}`: {what}"));
    let (text, negative, digits) = match &value {
        Value::Null => return Ok(None),
        Value::String(s) => (s.as_ref(), false, s.as_bytes()),
        Value::Number {
            text,
            integer: true,
            ..
        } => match text.strip_prefix('-') {
            Some(magnitude) => (*text, true, magnitude.as_bytes()),
            None => (*text, false, text.as_bytes()),
        },
        Value::Number { .. } => {
            return Err(invalid(format!(
                "expected {name}, got a non-integer number"
            )))
        }
        other => return Err(invalid(format!("expected {name}, got {}", other.kind()))),
    };
    let magnitude = match decimal(digits) {
        Decimal::NotDigits => {
            let shown: String = text.chars().take(40).collect();
            return Err(invalid(format!(
                "expected {name} digits, got the string \"{shown}\""
            )));
        }
        Decimal::TooLarge => None,
        Decimal::Value(magnitude) => Some(magnitude),
    };
    magnitude
        .and_then(|m| match negative {
            true => 0i64.checked_sub_unsigned(m),
            false => i64::try_from(m).ok(),
        })
        .filter(|v| (min..=max).contains(v))
        .map(Some)
        .ok_or_else(|| invalid(format!("{text} is out of range for {name}")))
}

/// What a run of bytes is as a decimal number.
pub(crate) enum Decimal {
    /// Empty, or a byte that is not an ASCII digit.
    NotDigits,
    /// Digits whose value is past `u64`.
    TooLarge,
    Value(u64),
}

/// Reads `digits` in one pass (leading zeros allowed).
pub(crate) fn decimal(digits: &[u8]) -> Decimal {
    if digits.is_empty() {
        return Decimal::NotDigits;
    }
    // Nineteen digits always fit a u64: no overflow checks on the usual path.
    if digits.len() <= 19 {
        return crate::json::short_decimal(digits).map_or(Decimal::NotDigits, Decimal::Value);
    }
    let mut value: Option<u64> = Some(0);
    for &b in digits {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return Decimal::NotDigits;
        }
        value = value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(u64::from(digit)));
    }
    value.map_or(Decimal::TooLarge, Decimal::Value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    const MAX: usize = 1 << 20;

    fn reason(raw: &[u8]) -> Reason {
        parse_envelope(raw, MAX).unwrap_err().reason
    }

    /// A payload object read from its text, as the envelope pass reads it.
    fn payload_of(text: &str) -> Result<Payload<'_>, Rejection> {
        let mut scanner = Scanner::new(text);
        let mut entries = Vec::new();
        scanner.object_entries(&mut entries).map_err(syntax)?;
        scanner.end().map_err(syntax)?;
        Ok(Payload {
            entries,
            ..Payload::default()
        })
    }

    fn owned(fields: Fields<'_>) -> Fields<'static> {
        fields
            .into_iter()
            .map(|v| {
                v.map(|v| match v {
                    FieldValue::Text(t) => FieldValue::Text(Cow::Owned(t.into_owned())),
                    FieldValue::Int(i) => FieldValue::Int(i),
                })
            })
            .collect()
    }

    /// A fix payload's fields, checked both ways, which must agree: read as entries and
    /// validated once the type is known, and checked as it is read (its type came first).
    fn fix_fields(payload: &str) -> Result<Fields<'static>, Rejection> {
        let spec = Spec::builtin();
        let schema = &spec.event_types["wrongbook_fix"];
        let deferred = payload_of(payload)?.validate(schema).map(owned);
        let message = format!(
            r#"{{"domain":"wrongbook","type":"wrongbook_fix","timestamp":1,"eventId":"e","payload":{payload}}}"#
        );
        let mut buffers = ParseBuffers::default();
        let as_read = buffers
            .parse_envelope(message.as_bytes(), MAX, |_, _| Some(schema))
            .and_then(|mut envelope| {
                assert!(envelope.payload.checked.is_some(), "checked as read");
                envelope.payload.validate(schema)
            })
            .map(owned);
        assert_eq!(deferred, as_read, "{payload}");
        deferred
    }

    #[test]
    fn a_good_envelope_parses_with_borrowed_fields() {
        let msg = br#"{"domain":"wrongbook","type":"wrongbook_add","timestamp":"1640995200000","eventId":7,"payload":{"userId":"u"},"extra":[1,{"a":null}]}"#;
        let env = parse_envelope(msg, MAX).unwrap();
        assert_eq!(env.domain, "wrongbook");
        assert_eq!(env.timestamp, 1_640_995_200_000);
        assert_eq!(env.event_id, "7");
        assert!(matches!(env.event_type, Cow::Borrowed(_)));
    }

    #[test]
    fn malformed_messages_get_their_reason() {
        assert_eq!(reason(b"\xff\xfe{}"), Reason::InvalidUtf8);
        assert_eq!(reason(b"{\"a\":"), Reason::InvalidJson);
        assert_eq!(reason(b"{\"a\":NaN}"), Reason::InvalidJson);
        assert_eq!(reason(b"{\"a\":1,}"), Reason::InvalidJson);
        assert_eq!(reason(b"{/*c*/\"a\":1}"), Reason::InvalidJson);
        assert_eq!(reason(br#"{"a":"\ud800"}"#), Reason::InvalidJson);
        assert_eq!(reason(br#"{"a":"\udc00\ud800"}"#), Reason::InvalidJson);
        assert_eq!(reason(b"[1,2]"), Reason::NotAnObject);
        assert_eq!(reason(b"\"str\""), Reason::NotAnObject);
        assert_eq!(reason(b""), Reason::InvalidJson);
        assert_eq!(reason(br#"{"type":"a","type":"b"}"#), Reason::DuplicateKey);
        assert_eq!(reason(br#"{"type":"a"}"#), Reason::MissingField);
        // Deep nesting in a field nobody reads is skipped iteratively, without recursion.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            reason(format!("{{\"x\":{deep}}}").as_bytes()),
            Reason::MissingField
        );
        assert_eq!(
            parse_envelope(&[b' '; 100], 10).unwrap_err().reason,
            Reason::MessageTooLarge
        );
        let base = |ts: &str, payload: &str| {
            format!(
                r#"{{"domain":"d","type":"t","timestamp":{ts},"eventId":"e","payload":{payload}}}"#
            )
        };
        assert_eq!(reason(base("1.5", "{}").as_bytes()), Reason::InvalidField);
        assert_eq!(
            reason(base("\"-1\"", "{}").as_bytes()),
            Reason::InvalidField
        );
        assert_eq!(
            reason(base("99999999999999999999", "{}").as_bytes()),
            Reason::InvalidField
        );
        assert_eq!(reason(base("true", "{}").as_bytes()), Reason::InvalidField);
        assert_eq!(reason(base("null", "{}").as_bytes()), Reason::MissingField);
        assert_eq!(reason(base("1", "[]").as_bytes()), Reason::InvalidField);
        assert_eq!(reason(base("1", "null").as_bytes()), Reason::MissingField);
        assert!(parse_envelope(base("1", "{}").as_bytes(), MAX).is_ok());
        assert!(parse_envelope(base("-5", r#"{"\ud83d\ude00":1}"#).as_bytes(), MAX).is_ok());
    }

    #[test]
    fn long_values_keep_their_range_at_the_edges() {
        let long = |v: &str| {
            long_field(
                Scanner::new(v).value().unwrap(),
                FieldPath::envelope("t"),
                FieldType::Long,
            )
        };
        let integer = |v: &str| {
            long_field(
                Scanner::new(v).value().unwrap(),
                FieldPath::envelope("t"),
                FieldType::Integer,
            )
        };
        assert_eq!(long("-9223372036854775808"), Ok(Some(i64::MIN)));
        assert_eq!(long("9223372036854775807"), Ok(Some(i64::MAX)));
        assert_eq!(long("\"9223372036854775807\""), Ok(Some(i64::MAX)));
        assert_eq!(long("\"000000000000000000000000042\""), Ok(Some(42)));
        assert_eq!(long("-0"), Ok(Some(0)));
        assert_eq!(long("null"), Ok(None));
        for out_of_range in [
            "-9223372036854775809",
            "9223372036854775808",
            "\"9223372036854775808\"",
            "\"99999999999999999999999\"",
        ] {
            let e = long(out_of_range).unwrap_err();
            assert_eq!(e.reason, Reason::InvalidField);
            assert!(
                e.detail.contains("out of range"),
                "{out_of_range}: {}",
                e.detail
            );
        }
        for not_digits in [
            "\"-1\"",
            "\"+1\"",
            "\"\"",
            "\"1 \"",
            "\"99999999999999999999999x\"",
        ] {
            let e = long(not_digits).unwrap_err();
            assert!(e.detail.contains("digits"), "{not_digits}: {}", e.detail);
        }
        assert_eq!(integer("-2147483648"), Ok(Some(-2_147_483_648)));
        assert!(integer("2147483648").is_err());
        assert!(integer("\"2147483648\"").is_err());
    }

    #[test]
    fn payload_fields_follow_the_type_rules() {
        let ok = fix_fields(
            r#"{"userId":12,"questionId":"q","wrongRecordId":"w","fixTime":"0017","fixResult":"correct","attempts":null,"other":{"deep":[1]}}"#,
        )
        .unwrap();
        assert!(ok.contains(&Some(FieldValue::Text("12".into()))));
        assert!(ok.contains(&Some(FieldValue::Int(17))));

        let bad = |p: &str| fix_fields(p).unwrap_err().reason;
        let base = r#""userId":"u","questionId":"q","wrongRecordId":"w","fixResult":"1""#;
        assert_eq!(bad(&format!("{{{base}}}")), Reason::MissingField);
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":null}}")),
            Reason::MissingField
        );
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":1.0}}")),
            Reason::InvalidField
        );
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":\"1e3\"}}")),
            Reason::InvalidField
        );
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":\"\"}}")),
            Reason::InvalidField
        );
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":1,\"attempts\":2147483648}}")),
            Reason::InvalidField
        );
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":1,\"fixId\":true}}")),
            Reason::InvalidField
        );
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":1,\"fixId\":{{}}}}")),
            Reason::InvalidField
        );
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":1,\"fixTime\":2}}")),
            Reason::DuplicateKey
        );
        // Keys no schema names are ignored, but not twice.
        let unknown: String = (0..10).map(|i| format!(",\"x{i}\":{i}")).collect();
        assert!(fix_fields(&format!("{{{base},\"fixTime\":1{unknown}}}")).is_ok());
        assert_eq!(
            bad(&format!("{{{base},\"fixTime\":1{unknown},\"x3\":0}}")),
            Reason::DuplicateKey
        );
        assert!(fix_fields(&format!(
            "{{{base},\"fixTime\":1,\"attempts\":\"2147483647\"}}"
        ))
        .is_ok());
    }

    #[test]
    fn a_payload_checked_as_read_is_outranked_as_a_deferred_one_is() {
        let spec = Spec::builtin();
        let schema = &spec.event_types["wrongbook_fix"];
        let parse = |message: &str| {
            let mut asked = Vec::new();
            let result = ParseBuffers::default()
                .parse_envelope(message.as_bytes(), MAX, |domain, event_type| {
                    asked.push((domain.to_owned(), event_type.to_owned()));
                    Some(schema)
                })
                .and_then(|mut envelope| envelope.payload.validate(schema))
                .map(owned);
            (result.map_err(|r| r.reason), asked)
        };
        let wrong = r#"{"fixTime":true}"#;
        // A syntax error after the payload outranks its wrong field; so does a wrong envelope
        // field; a key the envelope holds twice too.
        let head = r#"{"domain":"wrongbook","type":"wrongbook_fix","eventId":"e""#;
        let cases = [
            (
                format!(r#"{head},"payload":{wrong},"timestamp":1,}}"#),
                Reason::InvalidJson,
            ),
            (
                format!(r#"{head},"payload":{wrong},"timestamp":true}}"#),
                Reason::InvalidField,
            ),
            (
                format!(r#"{head},"payload":{wrong},"timestamp":1,"eventId":"f"}}"#),
                Reason::DuplicateKey,
            ),
            (
                format!(r#"{head},"payload":{wrong},"timestamp":1}}"#),
                Reason::InvalidField,
            ),
            // The payload's first problem in message order wins, and then only syntax counts.
            (
                format!(r#"{head},"timestamp":1,"payload":{{"fixTime":1,"fixTime":true}}}}"#),
                Reason::DuplicateKey,
            ),
            (
                format!(r#"{head},"timestamp":1,"payload":{{"fixTime":true,"fixTime":1,"x":[}}}}"#),
                Reason::InvalidJson,
            ),
            (
                format!(r#"{head},"timestamp":1,"payload":{{"fixTime":1}}}}"#),
                Reason::MissingField,
            ),
        ];
        for (message, reason) in cases {
            let (result, asked) = parse(&message);
            assert_eq!(result, Err(reason), "{message}");
            assert_eq!(
                asked,
                [("wrongbook".into(), "wrongbook_fix".into())],
                "{message}"
            );
        }
        // Only a payload after both the domain and the type is checked as it is read.
        for message in [
            r#"{"type":"wrongbook_fix","payload":{},"domain":"wrongbook","timestamp":1,"eventId":"e"}"#,
            r#"{"domain":"wrongbook","payload":{},"type":"wrongbook_fix","timestamp":1,"eventId":"e"}"#,
            r#"{"domain":"wrongbook","type":null,"payload":{},"timestamp":1,"eventId":"e"}"#,
        ] {
            let (result, asked) = parse(message);
            assert!(asked.is_empty(), "{message}");
            assert!(result.is_err(), "{message}");
        }
    }

    #[test]
    fn numbers_as_strings_render_as_decimal_text() {
        let ok = fix_fields(
            r#"{"userId":1.5,"questionId":-3,"wrongRecordId":123456789012345678901234567890,"fixTime":1,"fixResult":1}"#,
        )
        .unwrap();
        assert!(ok.contains(&Some(FieldValue::Text("1.5".into()))));
        assert!(ok.contains(&Some(FieldValue::Text("-3".into()))));
        assert!(ok.contains(&Some(FieldValue::Text(
            "123456789012345678901234567890".into()
        ))));
    }
}
