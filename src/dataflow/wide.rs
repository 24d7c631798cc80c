//! Wide rows (SPEC §6): a visible record, its latest fix and its dimension lookup become one row
//! of `dwd_wrong_record_wide_delta`, keyed by the record's wide-table id, and [`RowUpdate`]s
//! tell the sink what an id's row is after a time.
//!
//! `process_time` is not part of the row: it is the wall-clock time of the write, which the
//! sink adds, so that the dataflow's output depends only on its input.

use std::collections::HashMap;

use compact_str::{CompactString, ToCompactString};
use serde::{Deserialize, Serialize};

use crate::dataflow::dims::DimLookup;
use crate::dataflow::records::Record;

/// One row of the wide table, times in whole seconds (UTC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WideRow {
    pub id: u64,
    pub wrong_id: CompactString,
    pub user_id: CompactString,
    pub subject: Option<CompactString>,
    pub subject_name: Option<CompactString>,
    pub question_id: CompactString,
    pub question: Option<CompactString>,
    pub pattern_id: Option<CompactString>,
    pub pattern_name: Option<CompactString>,
    pub teach_type_id: Option<CompactString>,
    pub teach_type_name: Option<CompactString>,
    pub collect_time: i64,
    pub fix_id: Option<CompactString>,
    pub fix_time: Option<i64>,
    pub fix_result: Option<i64>,
    pub fix_result_desc: Option<CompactString>,
    pub event_id: CompactString,
    pub event_type: CompactString,
    /// The columns lookup tables fill, in the spec's order (empty without lookup tables).
    pub extra: Vec<Option<String>>,
}

impl WideRow {
    /// Builds the row of record `id`.
    pub fn assemble(
        id: u64,
        record: Record<'_>,
        lookup: &DimLookup<'_>,
        fix_result_desc: &HashMap<i64, String>,
    ) -> WideRow {
        let add = record.add;
        let fix = record.fix;
        // The later of the add and the latest fix by event time; ties go to the fix.
        let (event_id, event_type) = match fix {
            Some(fix) if fix.stamp.timestamp >= add.stamp.timestamp => {
                (&fix.stamp.event_id, &fix.event_type)
            }
            _ => (&add.stamp.event_id, &add.event_type),
        };
        WideRow {
            id,
            wrong_id: add.wrong_id.clone(),
            user_id: add.user_id.clone(),
            subject: add.subject.clone(),
            subject_name: add.subject_name.clone(),
            question_id: add.question_id.clone(),
            question: add.question.clone(),
            pattern_id: add.pattern_id.clone(),
            pattern_name: lookup.pattern_name.map(CompactString::from),
            teach_type_id: lookup
                .teach_type
                .map(|(tt_id, _)| tt_id.to_compact_string()),
            teach_type_name: lookup
                .teach_type
                .and_then(|(_, name)| name.as_deref().map(CompactString::from)),
            collect_time: add.collect_time,
            fix_id: fix.map(|f| f.fix_id.clone()),
            fix_time: fix.map(|f| f.fix_time_ms.div_euclid(1000)),
            fix_result: fix.map(|f| f.fix_result),
            fix_result_desc: fix
                .and_then(|f| fix_result_desc.get(&f.fix_result))
                .map(|d| CompactString::from(d.as_str())),
            event_id: event_id.clone(),
            event_type: CompactString::from(event_type.as_str()),
            extra: Vec::new(),
        }
    }
}

/// The row of an id after a time: `Some` to upsert, `None` to delete.
pub type RowUpdate = (u64, Option<WideRow>);
