//! The dimension chain (SPEC §5) as an incrementally maintained join:
//! pattern → teaching-type link (`pt`) → teaching type (`tt`).
//!
//! Records are not joined to the dimension tables directly. Records use few distinct
//! `(pattern_id, chapter_id)` pairs, so the chain is resolved per *pair*:
//!
//! 1. `candidates`: live `pt` rows joined to live `tt` rows, keyed by pattern.
//! 2. the pairs records use (`distinct`), joined to the pattern names and to the candidates
//!    (keeping those whose chapter matches, or all when the pair has no chapter),
//! 3. one `reduce` per pair to a [`DimLookup`]: the name and the candidate with the least
//!    (`order_num`, `tt.id`). A marker fact makes every used pair produce a lookup, matched or
//!    not, which gives the left-join semantics without an antijoin.
//!
//! Records then join the lookups by pair. When a dimension row changes, only the pairs it
//! touches change their lookup, and the join retracts and re-inserts exactly the wide rows of
//! the records using those pairs.

use serde::{Deserialize, Serialize};

use differential_dataflow::VecCollection;

use crate::dataflow::records::Record;
use crate::source::dims::{PatternRow, TeachingTypePtRow, TeachingTypeRow};

/// What a record's dimension lookups resolve to.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DimLookup {
    pub pattern_name: Option<String>,
    /// The winning teaching type: (`tt.id`, `tt.teaching_type_name`).
    pub teach_type: Option<(i64, Option<String>)>,
}

/// The join key of a record: its pattern and chapter.
pub type PairKey = (Option<String>, Option<String>);

/// A teaching-type candidate of a pattern. Field order is the winner order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Candidate {
    order_num: Option<i64>,
    tt_id: i64,
    name: Option<String>,
}

/// What is known about a used pair. `Used < Name < Candidate`, and candidates sort by
/// (`order_num`, `tt.id`), so a reduce sees the winner first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum PairFact {
    Used,
    Name(Option<String>),
    Candidate(Candidate),
}

/// The pair a record looks up.
pub fn pair_key(record: &Record) -> PairKey {
    (record.add.pattern_id.clone(), record.add.chapter_id.clone())
}

/// The lookup of every pair that `records` use, maintained as records and dimensions change.
pub fn dim_lookups<'scope>(
    records: VecCollection<'scope, u64, (u64, Record), isize>,
    patterns: VecCollection<'scope, u64, PatternRow, isize>,
    teaching_type_pts: VecCollection<'scope, u64, TeachingTypePtRow, isize>,
    teaching_types: VecCollection<'scope, u64, TeachingTypeRow, isize>,
) -> VecCollection<'scope, u64, (PairKey, DimLookup), isize> {
    let pairs = records.map(|(_, record)| pair_key(&record)).distinct();
    let by_pattern = pairs
        .clone()
        .flat_map(|(pattern, chapter)| pattern.map(|p| (p, chapter)));

    let names = patterns.map(|row| (row.id, row.name));
    let pair_names = by_pattern
        .clone()
        .join_map(names, |pattern, chapter, name| {
            (
                (Some(pattern.clone()), chapter.clone()),
                PairFact::Name(name.clone()),
            )
        });

    let live_links =
        teaching_type_pts.flat_map(|pt| match (pt.is_delete, pt.teaching_type_id, pt.pt_id) {
            (Some(0), Some(tt_id), Some(pattern)) => Some((tt_id, (pattern, pt.order_num))),
            _ => None,
        });
    let live_types = teaching_types.flat_map(|tt| match tt.is_delete {
        Some(0) => Some((tt.id, (tt.chapter_id, tt.name))),
        _ => None,
    });
    let candidates = live_links.join_map(
        live_types,
        |tt_id, (pattern, order_num), (chapter, name)| {
            (
                pattern.clone(),
                (
                    chapter.clone(),
                    Candidate {
                        order_num: *order_num,
                        tt_id: *tt_id,
                        name: name.clone(),
                    },
                ),
            )
        },
    );
    let pair_candidates = by_pattern
        .join_map(candidates, |pattern, chapter, (tt_chapter, candidate)| {
            let matches = chapter.is_none() || chapter == tt_chapter;
            matches.then(|| {
                (
                    (Some(pattern.clone()), chapter.clone()),
                    PairFact::Candidate(candidate.clone()),
                )
            })
        })
        .flat_map(|fact| fact);

    pairs
        .map(|pair| (pair, PairFact::Used))
        .concat(pair_names)
        .concat(pair_candidates)
        .reduce(|_pair, facts, output| {
            if !matches!(facts.first(), Some((PairFact::Used, _))) {
                return;
            }
            let mut lookup = DimLookup::default();
            for (fact, _) in facts {
                match fact {
                    PairFact::Used => {}
                    PairFact::Name(name) => {
                        if lookup.pattern_name.is_none() {
                            lookup.pattern_name = name.clone();
                        }
                    }
                    PairFact::Candidate(c) => {
                        lookup.teach_type = Some((c.tt_id, c.name.clone()));
                        break;
                    }
                }
            }
            output.push((lookup, 1));
        })
}
