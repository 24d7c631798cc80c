//! Dimension snapshots (SPEC §5): each dimension table is read in full with its query from the
//! dataflow spec; a new snapshot is diffed against the previous one so that only the
//! difference enters the dataflow.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError, Rows, SqlValue};
use crate::spec::{DimensionSpec, Dimensions};

/// A `tower_pattern` row, as the chain uses it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PatternRow {
    pub id: String,
    pub name: Option<String>,
}

/// A `tower_teaching_type_pt` row: links a pattern to a teaching type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TeachingTypePtRow {
    pub id: i64,
    pub teaching_type_id: Option<i64>,
    pub pt_id: Option<String>,
    pub order_num: Option<i64>,
    pub is_delete: Option<i64>,
}

/// A `tower_teaching_type` row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TeachingTypeRow {
    pub id: i64,
    pub chapter_id: Option<String>,
    pub name: Option<String>,
    pub is_delete: Option<i64>,
}

/// A full read of the three dimension tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimSnapshot {
    pub patterns: BTreeSet<PatternRow>,
    pub teaching_type_pts: BTreeSet<TeachingTypePtRow>,
    pub teaching_types: BTreeSet<TeachingTypeRow>,
}

/// The difference between two snapshots: rows to add (+1) and to retract (-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DimDiff {
    pub patterns: Vec<(PatternRow, isize)>,
    pub teaching_type_pts: Vec<(TeachingTypePtRow, isize)>,
    pub teaching_types: Vec<(TeachingTypeRow, isize)>,
}

impl DimDiff {
    /// Number of changed rows.
    pub fn len(&self) -> usize {
        self.patterns.len() + self.teaching_type_pts.len() + self.teaching_types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn diff_sets<T: Ord + Clone>(old: &BTreeSet<T>, new: &BTreeSet<T>) -> Vec<(T, isize)> {
    old.difference(new)
        .map(|row| (row.clone(), -1))
        .chain(new.difference(old).map(|row| (row.clone(), 1)))
        .collect()
}

impl DimSnapshot {
    /// What turns `self` into `next`.
    pub fn diff(&self, next: &DimSnapshot) -> DimDiff {
        DimDiff {
            patterns: diff_sets(&self.patterns, &next.patterns),
            teaching_type_pts: diff_sets(&self.teaching_type_pts, &next.teaching_type_pts),
            teaching_types: diff_sets(&self.teaching_types, &next.teaching_types),
        }
    }

    /// Reads all three tables with the spec's queries.
    pub fn read(db: &mut Db, dims: &Dimensions) -> Result<DimSnapshot, DbError> {
        Ok(DimSnapshot {
            patterns: read_table(db, &dims.pattern, |row| {
                Ok(PatternRow {
                    id: row.text("id")?.ok_or("a row has a NULL id")?,
                    name: row.text("name")?,
                })
            })?,
            teaching_type_pts: read_table(db, &dims.teaching_type_pt, |row| {
                Ok(TeachingTypePtRow {
                    id: row.int("id")?.ok_or("a row has a NULL id")?,
                    teaching_type_id: row.int("teaching_type_id")?,
                    pt_id: row.text("pt_id")?,
                    order_num: row.int("order_num")?,
                    is_delete: row.int("is_delete")?,
                })
            })?,
            teaching_types: read_table(db, &dims.teaching_type, |row| {
                Ok(TeachingTypeRow {
                    id: row.int("id")?.ok_or("a row has a NULL id")?,
                    chapter_id: row.text("chapter_id")?,
                    name: row.text("teaching_type_name")?,
                    is_delete: row.int("is_delete")?,
                })
            })?,
        })
    }
}

/// One result row, with its columns found by name.
struct NamedRow<'r> {
    rows: &'r Rows,
    row: &'r [SqlValue],
}

impl NamedRow<'_> {
    fn cell(&self, name: &str) -> Result<&SqlValue, String> {
        let index = self
            .rows
            .column(name)
            .ok_or_else(|| format!("the query returns no column `{name}`"))?;
        Ok(&self.row[index])
    }

    fn text(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.cell(name)?.clone().into_text())
    }

    fn int(&self, name: &str) -> Result<Option<i64>, String> {
        self.cell(name)?
            .to_int()
            .map_err(|e| format!("column `{name}`: {e}"))
    }
}

fn read_table<T: Ord>(
    db: &mut Db,
    dim: &DimensionSpec,
    convert: impl Fn(&NamedRow<'_>) -> Result<T, String>,
) -> Result<BTreeSet<T>, DbError> {
    let rows = db.query(&dim.query)?;
    rows.rows
        .iter()
        .map(|row| convert(&NamedRow { rows: &rows, row }))
        .collect::<Result<BTreeSet<T>, String>>()
        .map_err(|message| DbError::Query {
            target: db.target().to_owned(),
            what: format!("dimension `{}`", dim.table),
            message,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_holds_only_what_changed() {
        let row = |id: &str, name: &str| PatternRow {
            id: id.into(),
            name: Some(name.into()),
        };
        let old = DimSnapshot {
            patterns: [row("p1", "a"), row("p2", "b")].into(),
            ..Default::default()
        };
        let new = DimSnapshot {
            patterns: [row("p1", "a"), row("p2", "B"), row("p3", "c")].into(),
            ..Default::default()
        };
        let diff = old.diff(&new);
        assert_eq!(
            diff.patterns,
            vec![
                (row("p2", "b"), -1),
                (row("p2", "B"), 1),
                (row("p3", "c"), 1)
            ]
        );
        assert!(new.diff(&new).is_empty());
    }
}
