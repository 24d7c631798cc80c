//! The dimension chain (SPEC §5), maintained in differential dataflow:
//! pattern → teaching-type link (`pt`) → teaching type (`tt`).
//!
//! Everything a record needs from the three tables depends on its pattern, and on its chapter
//! only through a filter. So the chain is reduced, per pattern, to one [`PatternLookup`]: the
//! pattern's name, its winning teaching type over all chapters, and its winner within each
//! chapter. Live `pt` rows join live `tt` rows by teaching-type id, the names join in by pattern,
//! and one `reduce` per pattern keeps the candidates with the least (`order_num`, `tt.id`).
//!
//! The result is as small as the dimension tables, not as large as the records: it is
//! broadcast to every worker, where [`crate::dataflow::join`] holds the records. A change to a
//! dimension row changes the lookups of the patterns it touches, and nothing else.

use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use differential_dataflow::VecCollection;

use crate::source::dims::{PatternRow, TeachingTypePtRow, TeachingTypeRow};

/// A teaching type as a wide row shows it: (`tt.id`, `tt.teaching_type_name`).
pub type TeachType = (i64, Option<String>);

/// Everything the dimension chain knows about one pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PatternLookup {
    /// `tower_pattern.name`.
    pub name: Option<String>,
    /// The winner among all live candidates (for records without a chapter).
    pub overall: Option<TeachType>,
    /// The winner within each chapter, sorted by chapter.
    pub by_chapter: Vec<(String, TeachType)>,
}

/// What a record's lookups resolve to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DimLookup<'a> {
    pub pattern_name: Option<&'a str>,
    pub teach_type: Option<&'a TeachType>,
}

impl PatternLookup {
    /// The lookup of a record with this pattern and `chapter`: the chapter filter is dropped
    /// when the record has no chapter.
    pub fn resolve(&self, chapter: Option<&str>) -> DimLookup<'_> {
        let teach_type = match chapter {
            None => self.overall.as_ref(),
            Some(chapter) => self
                .by_chapter
                .binary_search_by(|(c, _)| c.as_str().cmp(chapter))
                .ok()
                .map(|i| &self.by_chapter[i].1),
        };
        DimLookup {
            pattern_name: self.name.as_deref(),
            teach_type,
        }
    }
}

/// A teaching-type candidate of a pattern. Field order is the winner order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Candidate {
    order_num: Option<i64>,
    tt_id: i64,
    chapter: Option<CompactString>,
    name: Option<CompactString>,
}

/// What is known about a pattern. Names sort before candidates, and candidates by
/// (`order_num`, `tt.id`), so a reduce meets each chapter's winner first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum PatternFact {
    Name(Option<CompactString>),
    Candidate(Candidate),
}

/// The lookup of every pattern the dimension tables mention, maintained as they change.
pub fn pattern_lookups<'scope>(
    patterns: VecCollection<'scope, u64, PatternRow, isize>,
    teaching_type_pts: VecCollection<'scope, u64, TeachingTypePtRow, isize>,
    teaching_types: VecCollection<'scope, u64, TeachingTypeRow, isize>,
) -> VecCollection<'scope, u64, (CompactString, Arc<PatternLookup>), isize> {
    // Inside the chain, ids and names are compact strings: the arrangements clone and move
    // them many times over, and ids and names this short are then copied, not allocated.
    let compact = |s: Option<String>| s.map(CompactString::from);
    let names = patterns.map(move |row| {
        (
            CompactString::from(row.id),
            PatternFact::Name(compact(row.name)),
        )
    });
    let live_links =
        teaching_type_pts.flat_map(|pt| match (pt.is_delete, pt.teaching_type_id, pt.pt_id) {
            (Some(0), Some(tt_id), Some(pattern)) => {
                Some((tt_id, (CompactString::from(pattern), pt.order_num)))
            }
            _ => None,
        });
    let live_types = teaching_types.flat_map(move |tt| match tt.is_delete {
        Some(0) => Some((tt.id, (compact(tt.chapter_id), compact(tt.name)))),
        _ => None,
    });
    let candidates = live_links.join_map(
        live_types,
        |tt_id, (pattern, order_num), (chapter, name)| {
            (
                pattern.clone(),
                PatternFact::Candidate(Candidate {
                    order_num: *order_num,
                    tt_id: *tt_id,
                    chapter: chapter.clone(),
                    name: name.clone(),
                }),
            )
        },
    );
    names.concat(candidates).reduce(|_pattern, facts, output| {
        let mut lookup = PatternLookup::default();
        for (fact, _) in facts {
            match fact {
                PatternFact::Name(name) => {
                    if lookup.name.is_none() {
                        lookup.name = name.as_deref().map(String::from);
                    }
                }
                PatternFact::Candidate(c) => {
                    let winner = (c.tt_id, c.name.as_deref().map(String::from));
                    if lookup.overall.is_none() {
                        lookup.overall = Some(winner.clone());
                    }
                    if let Some(chapter) = &c.chapter {
                        if !lookup.by_chapter.iter().any(|(seen, _)| seen == chapter) {
                            lookup.by_chapter.push((chapter.to_string(), winner));
                        }
                    }
                }
            }
        }
        lookup.by_chapter.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        output.push((Arc::new(lookup), 1));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_a_chapter_gets_the_overall_winner() {
        let lookup = PatternLookup {
            name: Some("p".into()),
            overall: Some((1, Some("one".into()))),
            by_chapter: vec![
                ("a".into(), (2, None)),
                ("c".into(), (3, Some("three".into()))),
            ],
        };
        assert_eq!(
            lookup.resolve(None).teach_type,
            Some(&(1, Some("one".into())))
        );
        assert_eq!(
            lookup.resolve(Some("c")).teach_type,
            Some(&(3, Some("three".into())))
        );
        assert_eq!(lookup.resolve(Some("b")).teach_type, None);
        assert_eq!(lookup.resolve(Some("b")).pattern_name, Some("p"));
    }
}
