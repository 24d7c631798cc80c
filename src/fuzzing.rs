//! The bodies of the fuzz targets (`fuzz/`), shared with their proptest twins in `tests/`, so
//! that CI runs the same checks the long fuzzing runs do. Each takes arbitrary bytes and
//! panics only when an invariant the engine relies on breaks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::config::Config;
use crate::dataflow::ingest::{Ingestor, Outcome};
use crate::dataflow::owner::OpsByOwner;
use crate::dataflow::process::{KeyedOp, RecordOp};
use crate::dataflow::records::Record;
use crate::dataflow::route::RouteTable;
use crate::dataflow::wide::WideRow;
use crate::event::{parse_envelope, Envelope, Fields, ParseBuffers, Rejection};
use crate::schema::{check_fits, format_timestamp, Dialect, WIDE_COLUMNS};
use crate::sink::statements::{row_params, upsert_sql, Param, WideTable};
use crate::spec::{EventSchema, Spec};

fn ingestor() -> &'static (Ingestor, RouteTable, HashMap<i64, String>) {
    static INGESTOR: OnceLock<(Ingestor, RouteTable, HashMap<i64, String>)> = OnceLock::new();
    INGESTOR.get_or_init(|| {
        let spec = Spec::builtin();
        let routes = RouteTable::build(crate::commands::gen::routing_rows(), &spec);
        let desc = spec.fix_result_desc.clone();
        let ingestor = Ingestor {
            spec: Arc::new(spec),
            max_message_bytes: 1 << 20,
        };
        (ingestor, routes, desc)
    })
}

/// A message through parse → validate → route → process, and an accepted add on through
/// wide-row assembly and statement parameters: one outcome, the same each time; every value
/// fits its column; one parameter per column.
pub fn message(data: &[u8]) {
    json_validity(data);
    payload_checks_agree(data);
    let (ingestor, routes, desc) = ingestor();
    // The second pass reuses the first one's buffers, as a worker does from message to message.
    let mut buffers = ParseBuffers::default();
    let mut ops = OpsByOwner::new(1, 2);
    let (label, outcome) = ingestor.ingest(data, routes, &mut buffers, &mut ops);
    let (again_label, again) = ingestor.ingest(data, routes, &mut buffers, &mut ops);
    let ops: Vec<KeyedOp> = ops.into_iter().collect();
    assert_eq!(label, again_label, "the label is deterministic");
    assert_eq!(
        std::mem::discriminant(&outcome),
        std::mem::discriminant(&again),
        "the outcome is deterministic"
    );
    let Outcome::Accepted = outcome else {
        assert!(ops.is_empty(), "only an accepted message has an operation");
        return;
    };
    assert_eq!(ops.len(), 2, "an accepted message has one operation");
    assert_eq!(ops[0], ops[1], "the operation is deterministic");
    let op = &ops[0];
    assert_eq!(op.id, crate::dataflow::process::wide_id(op.op.wrong_id()));
    let RecordOp::Add(add) = &op.op else {
        return;
    };
    let row = WideRow::assemble(op.id, Record { add, fix: None }, &Default::default(), desc);
    let params: Vec<Param<'_>> = row_params(&row, 1_700_000_000).collect();
    assert_eq!(params.len(), WIDE_COLUMNS.len());
    for ((column, _), param) in WIDE_COLUMNS.iter().zip(&params) {
        let formatted;
        let text = match param {
            Param::Text(t) => *t,
            Param::Time(seconds) => {
                formatted = format_timestamp(*seconds);
                formatted.as_str()
            }
            Param::Null | Param::Int(_) => continue,
        };
        assert!(
            check_fits(column, text).is_ok(),
            "`{column}` holds a value that does not fit: {text:?}"
        );
    }
    let sql = upsert_sql(Dialect::Mysql, &WideTable::plain("t"), 1);
    assert_eq!(sql.matches('?').count(), params.len());
}

/// A payload checked as it is read (its domain and type came first) has the outcome it has
/// when read as entries and validated after the envelope: the same fields, or the same
/// rejection, detail and all.
fn payload_checks_agree(data: &[u8]) {
    fn checked<'a>(
        envelope: Result<Envelope<'a>, Rejection>,
        spec: &Spec,
    ) -> Result<Option<Result<Fields<'a>, Rejection>>, Rejection> {
        envelope.map(|mut envelope| {
            schema_of(spec, &envelope.domain, &envelope.event_type)
                .map(|schema| envelope.payload.validate(schema))
        })
    }
    fn schema_of<'s>(spec: &'s Spec, domain: &str, event_type: &str) -> Option<&'s EventSchema> {
        (domain == spec.domain)
            .then(|| spec.event_types.get(event_type))
            .flatten()
    }
    let (ingestor, _, _) = ingestor();
    let (spec, max) = (&*ingestor.spec, ingestor.max_message_bytes);
    let mut buffers = ParseBuffers::default();
    let as_read = buffers.parse_envelope(data, max, |domain, ty| schema_of(spec, domain, ty));
    let deferred = parse_envelope(data, max);
    assert_eq!(
        checked(as_read, spec),
        checked(deferred, spec),
        "the payload's outcome depends on when it is checked"
    );
}

/// The message scanner ([`crate::json`]) accepts exactly the RFC 8259 texts serde_json accepts
/// (serde_json decodes every string of a `Value`, so it refuses lone surrogates too). Two limits
/// of serde_json's `Value` are not the scanner's, and texts that hit them are not compared: 128
/// levels of nesting, and numbers beyond f64 (`1e999`), which RFC 8259's grammar allows. The
/// scanner keeps such a number as its text; a field whose type rule reads it refuses it there.
pub fn json_validity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ours = crate::json::is_valid(text);
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(_) => assert!(
            ours,
            "serde_json accepts what the scanner refuses: {text:?}"
        ),
        Err(e)
            if e.to_string().contains("recursion limit")
                || e.to_string().contains("number out of range") => {}
        Err(e) => assert!(
            !ours,
            "the scanner accepts what serde_json refuses ({e}): {text:?}"
        ),
    }
}

/// Configuration and dataflow-spec text: parsed or refused with an error that names what is
/// wrong, never a panic.
pub fn config_and_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Spec::parse(text, "<fuzz>") {
        Ok(spec) => {
            // A spec that loads compiles its routes.
            let _ = RouteTable::build(crate::commands::gen::routing_rows(), &spec);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match Config::parse(text, "<fuzz>", PathBuf::from("."), std::iter::empty()) {
        Ok(config) => assert!(config.workers >= 1),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
