//! The dataflow spec (`dataflows/*.toml`): what each event type's payload must hold, what each
//! processor extracts, the processor aliases, the wide-row lookup maps and the dimension queries.
//!
//! The spec is data, not code: a new event type is a schema plus a processor entry here and a
//! routing row in the database. Loading validates the whole file and names the file, the key and
//! what is wrong, so a bad deploy fails at start rather than dead-lettering every event.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::HumanDuration;

/// The spec shipped with the binary, used when the configuration names none.
pub const BUILTIN_SPEC: &str = include_str!("../dataflows/wrongbook.toml");

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read dataflow spec {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("dataflow spec {file}: {message}")]
    Parse { file: String, message: String },
    #[error("dataflow spec {file}: `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// The type of a payload field (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FieldType {
    String,
    Long,
    Integer,
}

/// One payload field of an event type's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: String,
    pub ty: FieldType,
    pub required: bool,
}

/// The payload schema of one event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSchema {
    pub event_type: String,
    fields: Vec<FieldSpec>,
    /// Field name → index in `fields`: looked up for every key of every payload.
    by_name: crate::dataflow::FastMap<String, usize>,
    /// The fast way to `by_name`, by a hash of a name's length and three of its bytes: the
    /// index of the one field with that hash, [`NO_FIELD`] or [`SEVERAL_FIELDS`].
    by_shape: [u8; SHAPE_SLOTS],
}

const SHAPE_SLOTS: usize = 128;
const NO_FIELD: u8 = u8::MAX;
const SEVERAL_FIELDS: u8 = u8::MAX - 1;

/// A hash of a name that costs a few instructions: its length and its first, middle and last
/// bytes.
fn shape(name: &str) -> usize {
    let bytes = name.as_bytes();
    let (first, middle, last) = match bytes {
        [] => (0, 0, 0),
        _ => (bytes[0], bytes[bytes.len() / 2], bytes[bytes.len() - 1]),
    };
    let mixed = (bytes.len() as u32).wrapping_mul(0x9E37)
        ^ u32::from(first).wrapping_mul(0x85EB)
        ^ u32::from(middle).wrapping_mul(0xC2B3)
        ^ u32::from(last).wrapping_mul(0x27D5);
    (mixed ^ mixed >> 7) as usize % SHAPE_SLOTS
}

/// Whether two names are equal. Names of 4 to 16 bytes (nearly every field name) are compared
/// as two overlapping words each, inline, instead of through a call to `memcmp`, which cost
/// half of a field lookup.
#[inline]
pub(crate) fn same_name(a: &[u8], b: &[u8]) -> bool {
    fn word<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
        bytes[at..at + N].try_into().expect("N bytes")
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => {
            u64::from_ne_bytes(word(a, 0)) == u64::from_ne_bytes(word(b, 0))
                && u64::from_ne_bytes(word(a, n - 8)) == u64::from_ne_bytes(word(b, n - 8))
        }
        4..=7 => {
            u32::from_ne_bytes(word(a, 0)) == u32::from_ne_bytes(word(b, 0))
                && u32::from_ne_bytes(word(a, n - 4)) == u32::from_ne_bytes(word(b, n - 4))
        }
        _ => a == b,
    }
}

impl EventSchema {
    pub fn new(event_type: String, fields: Vec<FieldSpec>) -> EventSchema {
        let by_name = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        let mut by_shape = [NO_FIELD; SHAPE_SLOTS];
        for (i, field) in fields.iter().enumerate() {
            let slot = &mut by_shape[shape(&field.name)];
            *slot = match (*slot, u8::try_from(i)) {
                (NO_FIELD, Ok(i)) if i < SEVERAL_FIELDS => i,
                _ => SEVERAL_FIELDS,
            };
        }
        EventSchema {
            event_type,
            fields,
            by_name,
            by_shape,
        }
    }

    /// The fields, in payload-value order.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// The index of the field called `name`, if the schema has one. Always inlined: as a call
    /// (which the optimizer chose once the whole program was optimized as one unit) it cost
    /// the payload check ~15 % more.
    #[inline(always)]
    pub fn field_index(&self, name: &str) -> Option<usize> {
        match self.by_shape[shape(name)] {
            NO_FIELD => None,
            SEVERAL_FIELDS => self.by_name.get(name).copied(),
            i => {
                let i = usize::from(i);
                same_name(self.fields[i].name.as_bytes(), name.as_bytes()).then_some(i)
            }
        }
    }
}

/// The built-in processor kinds: what an event does to a wrong record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessorKind {
    /// Collects a wrong question: creates or replaces the record.
    Add,
    /// Submits a fix for a record.
    Fix,
    /// Deletes a record.
    Delete,
}

/// A slot a processor kind fills from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    WrongRecordId,
    UserId,
    QuestionId,
    Subject,
    SubjectName,
    PatternId,
    ChapterId,
    Question,
    WrongTime,
    CreateTime,
    FixTime,
    FixResult,
    FixId,
}

impl Slot {
    /// Number of slots; `Slot as usize` indexes arrays of this length.
    pub const COUNT: usize = 13;

    fn parse(kind: ProcessorKind, name: &str) -> Option<Slot> {
        let slot = match name {
            "wrong_record_id" => Slot::WrongRecordId,
            "user_id" => Slot::UserId,
            "question_id" => Slot::QuestionId,
            "subject" => Slot::Subject,
            "subject_name" => Slot::SubjectName,
            "pattern_id" => Slot::PatternId,
            "chapter_id" => Slot::ChapterId,
            "question" => Slot::Question,
            "wrong_time" => Slot::WrongTime,
            "create_time" => Slot::CreateTime,
            "fix_time" => Slot::FixTime,
            "fix_result" => Slot::FixResult,
            "fix_id" => Slot::FixId,
            _ => return None,
        };
        kind.slots().contains(&slot).then_some(slot)
    }

    /// Whether the slot holds a time (a Long) rather than text.
    pub fn is_time(self) -> bool {
        matches!(self, Slot::WrongTime | Slot::CreateTime | Slot::FixTime)
    }
}

impl ProcessorKind {
    /// The slots this kind can fill.
    pub fn slots(self) -> &'static [Slot] {
        use Slot::*;
        match self {
            ProcessorKind::Add => &[
                WrongRecordId,
                UserId,
                QuestionId,
                Subject,
                SubjectName,
                PatternId,
                ChapterId,
                Question,
                WrongTime,
                CreateTime,
            ],
            ProcessorKind::Fix => &[WrongRecordId, FixTime, FixResult, FixId],
            ProcessorKind::Delete => &[WrongRecordId],
        }
    }

    /// The slots without which an event of this kind is a dead letter.
    pub fn required_slots(self) -> &'static [Slot] {
        use Slot::*;
        match self {
            ProcessorKind::Add => &[UserId, QuestionId],
            ProcessorKind::Fix => &[WrongRecordId, FixTime, FixResult],
            ProcessorKind::Delete => &[WrongRecordId],
        }
    }
}

/// A processor: a built-in kind and the payload field that fills each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorSpec {
    pub name: String,
    pub kind: ProcessorKind,
    pub fields: BTreeMap<Slot, String>,
}

/// How one dimension table is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimensionSpec {
    pub table: String,
    pub query: String,
    pub refresh_interval: Duration,
}

/// The three dimension tables of the chain (SPEC §5), and the lookup tables that fill extra
/// wide-table columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimensions {
    pub pattern: DimensionSpec,
    pub teaching_type_pt: DimensionSpec,
    pub teaching_type: DimensionSpec,
    pub lookups: Vec<LookupSpec>,
}

impl Dimensions {
    /// The extra wide-table columns the lookups fill, in order.
    pub fn extra_columns(&self) -> Vec<String> {
        self.lookups
            .iter()
            .flat_map(|l| l.columns.iter().map(|(column, _)| column.clone()))
            .collect()
    }
}

/// The record field a lookup table is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyField {
    UserId,
    QuestionId,
    Subject,
    PatternId,
    ChapterId,
}

impl KeyField {
    /// The record's value of this field.
    pub fn of(self, add: &crate::dataflow::process::AddEvent) -> Option<&str> {
        match self {
            KeyField::UserId => Some(&add.user_id),
            KeyField::QuestionId => Some(&add.question_id),
            KeyField::Subject => add.subject.as_deref(),
            KeyField::PatternId => add.pattern_id.as_deref(),
            KeyField::ChapterId => add.chapter_id.as_deref(),
        }
    }
}

/// A lookup table (a dimension without code): read in full with `query` every
/// `refresh_interval`, its rows matched to records by `key`, each match filling `columns` of the
/// wide table (NULL when nothing matches). Changes correct exactly the rows whose values change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupSpec {
    pub name: String,
    pub table: String,
    pub key: KeyField,
    /// The query's column holding the key.
    pub key_column: String,
    pub query: String,
    pub refresh_interval: Duration,
    /// (wide-table column, query column), in wide-table order.
    pub columns: Vec<(String, String)>,
}

/// A short table from names to values that events read by name (routes by event type, the
/// spec's subject names and fix results). Up to [`NameMap::SEARCHED`] entries are found by
/// comparing lengths and words inline ([`same_name`]), which costs less than hashing the name
/// and comparing it through `memcmp`; a longer table is hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameMap<V> {
    /// Sorted by name, so that two maps of the same entries are equal.
    entries: Vec<(String, V)>,
    /// Where each name is in `entries`, for tables longer than [`NameMap::SEARCHED`].
    hashed: Option<crate::dataflow::FastMap<String, usize>>,
}

impl<V> NameMap<V> {
    /// The longest table searched rather than hashed.
    pub(crate) const SEARCHED: usize = 8;

    /// The value of `name`, if the table has it.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&V> {
        match &self.hashed {
            None => self
                .entries
                .iter()
                .find(|(key, _)| same_name(key.as_bytes(), name.as_bytes()))
                .map(|(_, value)| value),
            Some(hashed) => hashed.get(name).map(|&at| &self.entries[at].1),
        }
    }
}

impl<V> Default for NameMap<V> {
    fn default() -> NameMap<V> {
        NameMap {
            entries: Vec::new(),
            hashed: None,
        }
    }
}

impl<V> FromIterator<(String, V)> for NameMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(entries: I) -> NameMap<V> {
        let mut entries: Vec<(String, V)> = entries.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        let hashed = (entries.len() > Self::SEARCHED).then(|| {
            entries
                .iter()
                .enumerate()
                .map(|(at, (name, _))| (name.clone(), at))
                .collect()
        });
        NameMap { entries, hashed }
    }
}

/// A loaded and validated dataflow spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub domain: String,
    pub event_types: BTreeMap<String, EventSchema>,
    pub processors: BTreeMap<String, ProcessorSpec>,
    aliases: HashMap<String, String>,
    pub subject_names: NameMap<String>,
    pub fix_results: NameMap<i64>,
    pub fix_result_desc: HashMap<i64, String>,
    pub dimensions: Dimensions,
}

impl Spec {
    /// Loads and validates the spec at `path`.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SpecError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Spec::parse(&text, &path.display().to_string())
    }

    /// The spec shipped with the binary.
    pub fn builtin() -> Spec {
        Spec::parse(BUILTIN_SPEC, "<builtin dataflows/wrongbook.toml>")
            .expect("the built-in spec is validated by the test suite")
    }

    /// Parses and validates spec text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Spec, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        raw.validate(file)
    }

    /// Resolves a routing row's `processor_class` (a processor name or one of its aliases).
    pub fn processor(&self, name_or_alias: &str) -> Option<&ProcessorSpec> {
        let name = self
            .aliases
            .get(name_or_alias)
            .map(String::as_str)
            .unwrap_or(name_or_alias);
        self.processors.get(name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    domain: String,
    #[serde(default)]
    event_types: BTreeMap<String, RawEventType>,
    #[serde(default)]
    processors: BTreeMap<String, RawProcessor>,
    #[serde(default)]
    subject_names: HashMap<String, String>,
    fix_results: HashMap<String, i64>,
    fix_result_desc: HashMap<String, String>,
    dimensions: RawDimensions,
    #[serde(default)]
    lookups: BTreeMap<String, RawLookup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLookup {
    table: String,
    key: KeyField,
    key_column: String,
    query: String,
    #[serde(default = "default_refresh")]
    refresh_interval: HumanDuration,
    columns: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEventType {
    payload: BTreeMap<String, RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: FieldType,
    #[serde(default)]
    required: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcessor {
    kind: ProcessorKind,
    #[serde(default)]
    aliases: Vec<String>,
    fields: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDimensions {
    pattern: RawDimension,
    teaching_type_pt: RawDimension,
    teaching_type: RawDimension,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDimension {
    table: String,
    query: String,
    #[serde(default = "default_refresh")]
    refresh_interval: HumanDuration,
}

fn default_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 60))
}

impl RawSpec {
    fn validate(self, file: &str) -> Result<Spec, SpecError> {
        let invalid = |key: String, message: String| SpecError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        if self.domain.trim().is_empty() {
            return Err(invalid("domain".into(), "must not be empty".into()));
        }

        let mut event_types = BTreeMap::new();
        for (event_type, raw) in self.event_types {
            if raw.payload.is_empty() {
                return Err(invalid(
                    format!("event_types.{event_type}.payload"),
                    "a payload schema needs at least one field".into(),
                ));
            }
            let fields = raw
                .payload
                .into_iter()
                .map(|(name, f)| FieldSpec {
                    name,
                    ty: f.ty,
                    required: f.required,
                })
                .collect();
            event_types.insert(event_type.clone(), EventSchema::new(event_type, fields));
        }

        let mut processors = BTreeMap::new();
        let mut aliases = HashMap::new();
        for (name, raw) in self.processors {
            let mut fields = BTreeMap::new();
            for (slot_name, field) in raw.fields {
                let slot = Slot::parse(raw.kind, &slot_name).ok_or_else(|| {
                    invalid(
                        format!("processors.{name}.fields.{slot_name}"),
                        format!(
                            "a `{:?}` processor has no slot `{slot_name}`; it knows {}",
                            raw.kind,
                            slot_names(raw.kind)
                        ),
                    )
                })?;
                if field.is_empty() {
                    return Err(invalid(
                        format!("processors.{name}.fields.{slot_name}"),
                        "names no payload field".into(),
                    ));
                }
                fields.insert(slot, field);
            }
            for slot in raw.kind.required_slots() {
                if !fields.contains_key(slot) {
                    return Err(invalid(
                        format!("processors.{name}.fields"),
                        format!("a `{:?}` processor must map slot {:?}", raw.kind, slot),
                    ));
                }
            }
            for alias in raw.aliases {
                if let Some(other) = aliases.insert(alias.clone(), name.clone()) {
                    return Err(invalid(
                        format!("processors.{name}.aliases"),
                        format!("alias `{alias}` is already taken by processor `{other}`"),
                    ));
                }
            }
            processors.insert(
                name.clone(),
                ProcessorSpec {
                    name,
                    kind: raw.kind,
                    fields,
                },
            );
        }
        if let Some((alias, _)) = aliases.iter().find(|(a, _)| processors.contains_key(*a)) {
            return Err(invalid(
                "processors".into(),
                format!("alias `{alias}` is also the name of a processor"),
            ));
        }

        let mut fix_result_desc = HashMap::new();
        for (code, desc) in self.fix_result_desc {
            let value: i64 = code.parse().map_err(|_| {
                invalid(
                    format!("fix_result_desc.{code}"),
                    "keys must be fix_result integers".into(),
                )
            })?;
            fix_result_desc.insert(value, desc);
        }
        for (text, value) in &self.fix_results {
            if !fix_result_desc.contains_key(value) {
                return Err(invalid(
                    format!("fix_results.{text}"),
                    format!("maps to {value}, which has no entry in [fix_result_desc]"),
                ));
            }
        }

        let dims = self.dimensions;
        for (key, dim) in [
            ("pattern", &dims.pattern),
            ("teaching_type_pt", &dims.teaching_type_pt),
            ("teaching_type", &dims.teaching_type),
        ] {
            if dim.query.trim().is_empty() {
                return Err(invalid(
                    format!("dimensions.{key}.query"),
                    "must not be empty".into(),
                ));
            }
            if !crate::config::is_identifier(&dim.table) {
                return Err(invalid(
                    format!("dimensions.{key}.table"),
                    format!("`{}` is not a plain SQL table name", dim.table),
                ));
            }
            if dim.refresh_interval.0.is_zero() {
                return Err(invalid(
                    format!("dimensions.{key}.refresh_interval"),
                    "must be positive".into(),
                ));
            }
        }
        let mut lookups = Vec::with_capacity(self.lookups.len());
        let mut extra_columns: Vec<String> = Vec::new();
        for (name, raw) in self.lookups {
            let key = |field: &str| format!("lookups.{name}.{field}");
            if !crate::config::is_identifier(&raw.table) {
                return Err(invalid(
                    key("table"),
                    format!("`{}` is not a plain SQL table name", raw.table),
                ));
            }
            if raw.query.trim().is_empty() {
                return Err(invalid(key("query"), "must not be empty".into()));
            }
            if raw.refresh_interval.0.is_zero() {
                return Err(invalid(key("refresh_interval"), "must be positive".into()));
            }
            if raw.columns.is_empty() {
                return Err(invalid(
                    key("columns"),
                    "name at least one wide-table column = query column".into(),
                ));
            }
            for column in raw.columns.keys() {
                if !crate::config::is_identifier(column) {
                    return Err(invalid(
                        key("columns"),
                        format!("`{column}` is not a plain SQL column name"),
                    ));
                }
                if crate::schema::WIDE_COLUMNS.iter().any(|(c, _)| c == column)
                    || extra_columns.contains(column)
                {
                    return Err(invalid(
                        key("columns"),
                        format!("column `{column}` is already filled by the wide table or another lookup"),
                    ));
                }
                extra_columns.push(column.clone());
            }
            lookups.push(LookupSpec {
                name,
                table: raw.table,
                key: raw.key,
                key_column: raw.key_column,
                query: raw.query,
                refresh_interval: raw.refresh_interval.0,
                columns: raw.columns.into_iter().collect(),
            });
        }
        let dimension = |d: RawDimension| DimensionSpec {
            table: d.table,
            query: d.query,
            refresh_interval: d.refresh_interval.0,
        };

        Ok(Spec {
            domain: self.domain,
            event_types,
            processors,
            aliases,
            subject_names: self.subject_names.into_iter().collect(),
            fix_results: self.fix_results.into_iter().collect(),
            fix_result_desc,
            dimensions: Dimensions {
                pattern: dimension(dims.pattern),
                teaching_type_pt: dimension(dims.teaching_type_pt),
                teaching_type: dimension(dims.teaching_type),
                lookups,
            },
        })
    }
}

fn slot_names(kind: ProcessorKind) -> String {
    kind.slots()
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differing_in_any_one_byte_or_in_length_are_not_the_same() {
        for len in 0..=20 {
            let name: Vec<u8> = (0..len).map(|i| b'a' + i as u8).collect();
            assert!(same_name(&name, &name.clone()), "length {len}");
            for at in 0..len {
                let mut other = name.clone();
                other[at] = b'Z';
                assert!(!same_name(&name, &other), "length {len}, byte {at}");
            }
            if len > 0 {
                assert!(!same_name(&name, &name[..len - 1]), "length {len}, shorter");
            }
        }
    }

    #[test]
    fn field_index_finds_exactly_the_schema_fields_whatever_their_number() {
        for count in [0, 1, 12, 300] {
            let names: Vec<String> = (0..count).map(|i| format!("f{i}")).collect();
            let fields = names
                .iter()
                .map(|name| FieldSpec {
                    name: name.clone(),
                    ty: FieldType::String,
                    required: false,
                })
                .collect();
            let schema = EventSchema::new("t".into(), fields);
            for (i, name) in names.iter().enumerate() {
                assert_eq!(schema.field_index(name), Some(i), "{name} of {count}");
            }
            for other in ["", "f", "F0", "f0 ", "g1", "f1000", "userId"] {
                assert_eq!(schema.field_index(other), None, "{other} of {count}");
            }
        }
    }

    #[test]
    fn name_maps_find_exactly_their_names_searched_or_hashed() {
        for count in [0, 1, 8, 9, 16, 17, 300] {
            // Names of one length, and one a prefix of another, in no order.
            let names: Vec<String> = (0..count).rev().map(|i| format!("result{i:03}")).collect();
            let map: NameMap<usize> = names.iter().cloned().zip(0..).collect();
            assert_eq!(map.hashed.is_some(), count > NameMap::<usize>::SEARCHED);
            for (i, name) in names.iter().enumerate() {
                assert_eq!(map.get(name), Some(&i), "{name} of {count}");
            }
            for other in [
                "",
                "result",
                "result00",
                "result0000",
                "Result000",
                "result999",
            ] {
                assert_eq!(map.get(other), None, "{other} of {count}");
            }
            let reversed: NameMap<usize> = names.iter().cloned().zip(0..count).rev().collect();
            assert_eq!(reversed, map, "the same entries in another order");
        }
    }

    #[test]
    fn builtin_spec_loads_with_the_seed_processors_and_aliases() {
        let spec = Spec::builtin();
        assert_eq!(spec.domain, "wrongbook");
        let add = spec
            .processor("com.flink.realtime.processor.impl.WrongbookAddProcessor")
            .expect("seed alias resolves");
        assert_eq!(add.name, "wrongbook_add");
        assert_eq!(
            spec.processor("wrongbook_fix").unwrap().kind,
            ProcessorKind::Fix
        );
        assert!(spec.processor("com.example.Nope").is_none());
        assert_eq!(spec.fix_results.get("correct"), Some(&1));
        assert_eq!(spec.fix_result_desc[&0], "未订正");
        assert_eq!(
            spec.subject_names.get("math").map(String::as_str),
            Some("数学")
        );
        let fix = &spec.event_types["wrongbook_fix"];
        let fix_time = &fix.fields[fix.field_index("fixTime").unwrap()];
        assert_eq!((fix_time.ty, fix_time.required), (FieldType::Long, true));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let bad = BUILTIN_SPEC.replace("fix_time = \"fixTime\"", "fix_tme = \"fixTime\"");
        let err = Spec::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(err.contains("x.toml"), "{err}");
        assert!(
            err.contains("processors.wrongbook_fix.fields.fix_tme"),
            "{err}"
        );

        let bad = BUILTIN_SPEC.replace("type = \"Long\"", "type = \"Lng\"");
        let err = Spec::parse(&bad, "y.toml").unwrap_err().to_string();
        assert!(err.contains("y.toml") && err.contains("Lng"), "{err}");

        let bad = BUILTIN_SPEC.replace("\"wrong\" = 0", "\"wrong\" = 7");
        let err = Spec::parse(&bad, "z.toml").unwrap_err().to_string();
        assert!(err.contains("fix_results.wrong"), "{err}");

        let bad = BUILTIN_SPEC.replace("table = \"tower_pattern\"", "table = \"x; DROP\"");
        let err = Spec::parse(&bad, "w.toml").unwrap_err().to_string();
        assert!(err.contains("dimensions.pattern.table"), "{err}");
    }
}
