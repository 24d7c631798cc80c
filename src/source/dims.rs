//! Dimension snapshots (SPEC §5): each dimension table is read in full with its query from the
//! dataflow spec; a new snapshot is diffed against the previous one so that only the
//! difference enters the dataflow. While a job runs, [`DimRefresher`] re-reads each table on
//! its own interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::db::{Db, DbError, DbSettings, Rows, SqlValue};
use crate::sink::dead_letters::{DeadLetterSink, Notice, NoticeKind};
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

/// A row of a lookup table: its key and the values of its columns, in the spec's order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LookupRow {
    pub key: String,
    pub values: Vec<Option<String>>,
}

/// A full read of the three dimension tables and of the lookup tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimSnapshot {
    pub patterns: BTreeSet<PatternRow>,
    pub teaching_type_pts: BTreeSet<TeachingTypePtRow>,
    pub teaching_types: BTreeSet<TeachingTypeRow>,
    /// Per lookup (by its index in the spec), its rows.
    pub lookups: BTreeMap<u16, BTreeSet<LookupRow>>,
}

/// The difference between two snapshots: rows to add (+1) and to retract (-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DimDiff {
    pub patterns: Vec<(PatternRow, isize)>,
    pub teaching_type_pts: Vec<(TeachingTypePtRow, isize)>,
    pub teaching_types: Vec<(TeachingTypeRow, isize)>,
    pub lookups: Vec<((u16, LookupRow), isize)>,
}

impl DimDiff {
    /// Number of changed rows.
    pub fn len(&self) -> usize {
        self.patterns.len()
            + self.teaching_type_pts.len()
            + self.teaching_types.len()
            + self.lookups.len()
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
            lookups: {
                let empty = BTreeSet::new();
                let indexes: BTreeSet<u16> = self
                    .lookups
                    .keys()
                    .chain(next.lookups.keys())
                    .copied()
                    .collect();
                indexes
                    .into_iter()
                    .flat_map(|i| {
                        let old = self.lookups.get(&i).unwrap_or(&empty);
                        let new = next.lookups.get(&i).unwrap_or(&empty);
                        diff_sets(old, new)
                            .into_iter()
                            .map(move |(row, d)| ((i, row), d))
                    })
                    .collect()
            },
        }
    }

    /// Reads all three tables with the spec's queries.
    pub fn read(db: &mut Db, dims: &Dimensions) -> Result<DimSnapshot, DbError> {
        let mut snapshot = DimSnapshot::default();
        for table in DimTable::all(dims) {
            snapshot = snapshot.with_table_read(db, dims, table)?;
        }
        Ok(snapshot)
    }

    /// This snapshot with `table` re-read.
    pub fn with_table_read(
        &self,
        db: &mut Db,
        dims: &Dimensions,
        table: DimTable,
    ) -> Result<DimSnapshot, DbError> {
        let mut next = self.clone();
        match table {
            DimTable::Pattern => {
                next.patterns = read_table(db, &dims.pattern, |row| {
                    Ok(PatternRow {
                        id: row.text("id")?.ok_or("a row has a NULL id")?,
                        name: row.text("name")?,
                    })
                })?
            }
            DimTable::TeachingTypePt => {
                next.teaching_type_pts = read_table(db, &dims.teaching_type_pt, |row| {
                    Ok(TeachingTypePtRow {
                        id: row.int("id")?.ok_or("a row has a NULL id")?,
                        teaching_type_id: row.int("teaching_type_id")?,
                        pt_id: row.text("pt_id")?,
                        order_num: row.int("order_num")?,
                        is_delete: row.int("is_delete")?,
                    })
                })?
            }
            DimTable::TeachingType => {
                next.teaching_types = read_table(db, &dims.teaching_type, |row| {
                    Ok(TeachingTypeRow {
                        id: row.int("id")?.ok_or("a row has a NULL id")?,
                        chapter_id: row.text("chapter_id")?,
                        name: row.text("teaching_type_name")?,
                        is_delete: row.int("is_delete")?,
                    })
                })?
            }
            DimTable::Lookup(i) => {
                let lookup = &dims.lookups[usize::from(i)];
                let spec = DimensionSpec {
                    table: lookup.table.clone(),
                    query: lookup.query.clone(),
                    refresh_interval: lookup.refresh_interval,
                };
                let rows = read_table(db, &spec, |row| {
                    Ok(LookupRow {
                        key: row
                            .text(&lookup.key_column)?
                            .ok_or_else(|| format!("a row has a NULL `{}`", lookup.key_column))?,
                        values: lookup
                            .columns
                            .iter()
                            .map(|(_, column)| row.text(column))
                            .collect::<Result<_, _>>()?,
                    })
                })?;
                // One row per key: two rows with one key would make the lookup ambiguous.
                let mut keys = BTreeSet::new();
                if let Some(row) = rows.iter().find(|r| !keys.insert(&r.key)) {
                    return Err(DbError::Query {
                        target: db.target().to_owned(),
                        what: format!("lookup `{}`", lookup.name),
                        message: format!(
                            "key `{}` appears in more than one row; a lookup needs one row per key",
                            row.key
                        ),
                    });
                }
                next.lookups.insert(i, rows);
            }
        }
        Ok(next)
    }

    /// The rows `table` holds.
    pub fn rows_of(&self, table: DimTable) -> usize {
        match table {
            DimTable::Pattern => self.patterns.len(),
            DimTable::TeachingTypePt => self.teaching_type_pts.len(),
            DimTable::TeachingType => self.teaching_types.len(),
            DimTable::Lookup(i) => self.lookups.get(&i).map_or(0, BTreeSet::len),
        }
    }
}

/// One of the three dimension tables of the chain, or a lookup table (by its index in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DimTable {
    Pattern,
    TeachingTypePt,
    TeachingType,
    Lookup(u16),
}

impl DimTable {
    /// Every table `dims` reads.
    pub fn all(dims: &Dimensions) -> Vec<DimTable> {
        let chain = [
            DimTable::Pattern,
            DimTable::TeachingTypePt,
            DimTable::TeachingType,
        ];
        let lookups = (0..dims.lookups.len()).map(|i| DimTable::Lookup(i as u16));
        chain.into_iter().chain(lookups).collect()
    }

    /// Its name in the dataflow spec (`[dimensions.NAME]` or `[lookups.NAME]`).
    pub fn name(self, dims: &Dimensions) -> &str {
        match self {
            DimTable::Pattern => "pattern",
            DimTable::TeachingTypePt => "teaching_type_pt",
            DimTable::TeachingType => "teaching_type",
            DimTable::Lookup(i) => &dims.lookups[usize::from(i)].name,
        }
    }

    /// The database table it reads.
    pub fn table(self, dims: &Dimensions) -> &str {
        match self {
            DimTable::Pattern => &dims.pattern.table,
            DimTable::TeachingTypePt => &dims.teaching_type_pt.table,
            DimTable::TeachingType => &dims.teaching_type.table,
            DimTable::Lookup(i) => &dims.lookups[usize::from(i)].table,
        }
    }

    pub fn refresh_interval(self, dims: &Dimensions) -> Duration {
        match self {
            DimTable::Pattern => dims.pattern.refresh_interval,
            DimTable::TeachingTypePt => dims.teaching_type_pt.refresh_interval,
            DimTable::TeachingType => dims.teaching_type.refresh_interval,
            DimTable::Lookup(i) => dims.lookups[usize::from(i)].refresh_interval,
        }
    }
}

/// How one dimension table's refreshes go, for metrics and the status page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DimTableStatus {
    pub table: String,
    pub rows: usize,
    /// When the last good snapshot was read (ms since the epoch).
    pub last_refresh_ms: i64,
    /// Rows that changed in the last refresh that found a change.
    pub last_diff_rows: usize,
    pub next_refresh_ms: i64,
    pub failures: u64,
    pub last_error: Option<String>,
}

/// The last dimension change and how long its corrections took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DimCorrection {
    /// Dimension rows that changed.
    pub dim_rows: usize,
    /// Wide rows written (upserted or deleted) to correct it.
    pub wide_rows: u64,
    /// From the change entering the dataflow to every correction committed.
    pub seconds: f64,
    pub at_ms: i64,
}

/// Dimension refresh figures, shared by the refresher, the engine and the metrics.
#[derive(Debug, Default)]
pub struct DimStats {
    pub tables: Mutex<BTreeMap<DimTable, DimTableStatus>>,
    pub last_correction: Mutex<Option<DimCorrection>>,
}

impl DimStats {
    /// Records a good snapshot of every table.
    pub fn loaded(&self, snapshot: &DimSnapshot, dims: &Dimensions) {
        for table in DimTable::all(dims) {
            self.refreshed(
                dims,
                table,
                snapshot.rows_of(table),
                0,
                table.refresh_interval(dims),
            );
        }
    }

    /// Records a good read of `table`: `rows` rows, `changed` of them different.
    pub fn refreshed(
        &self,
        dims: &Dimensions,
        table: DimTable,
        rows: usize,
        changed: usize,
        next_in: Duration,
    ) {
        self.update(dims, table, next_in, |status, now| {
            status.rows = rows;
            status.last_refresh_ms = now;
            status.last_error = None;
            if changed > 0 {
                status.last_diff_rows = changed;
            }
        });
    }

    /// Records a failed read of `table`.
    pub fn failed(&self, dims: &Dimensions, table: DimTable, error: String, next_in: Duration) {
        self.update(dims, table, next_in, |status, _| {
            status.failures += 1;
            status.last_error = Some(error);
        });
    }

    fn update(
        &self,
        dims: &Dimensions,
        table: DimTable,
        next_in: Duration,
        change: impl FnOnce(&mut DimTableStatus, i64),
    ) {
        let now = crate::source::routing::now_ms();
        let mut tables = self.tables.lock().expect("dim stats lock");
        let status = tables.entry(table).or_default();
        status.table = table.table(dims).to_owned();
        status.next_refresh_ms = now + next_in.as_millis() as i64;
        change(status, now);
    }
}

/// Re-reads each dimension table on its own interval while a job runs and sends what changed
/// to the dataflow. A read that fails keeps the last good snapshot, is retried with backoff
/// and raises an alert (once per failing episode).
pub struct DimRefresher {
    pub settings: DbSettings,
    pub dims: Dimensions,
    /// The snapshot the dataflow holds.
    pub snapshot: DimSnapshot,
    pub updates: crossbeam_channel::Sender<DimDiff>,
    pub notices: Arc<dyn DeadLetterSink>,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<DimStats>,
}

impl DimRefresher {
    /// Refreshes on a thread of its own until `stop` is set or the engine is gone.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("wrongbook-dims".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let start = Instant::now();
        let mut due: BTreeMap<DimTable, Instant> = DimTable::all(&self.dims)
            .into_iter()
            .map(|t| (t, start + t.refresh_interval(&self.dims)))
            .collect();
        let mut backoff: BTreeMap<DimTable, Duration> = BTreeMap::new();
        let mut db: Option<Db> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let Some((&table, _)) = due
                .iter()
                .filter(|(_, at)| **at <= now)
                .min_by_key(|(_, at)| **at)
            else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let interval = table.refresh_interval(&self.dims);
            let name = table.name(&self.dims).to_owned();
            let read = match db.as_mut() {
                Some(db) => self.snapshot.with_table_read(db, &self.dims, table),
                None => self.settings.connect().and_then(|mut fresh| {
                    let read = self.snapshot.with_table_read(&mut fresh, &self.dims, table);
                    db = Some(fresh);
                    read
                }),
            };
            match read {
                Ok(next) => {
                    if backoff.remove(&table).is_some() {
                        tracing::info!(
                            dimension = name.as_str(),
                            "the dimension table is readable again"
                        );
                    }
                    due.insert(table, Instant::now() + interval);
                    let diff = self.snapshot.diff(&next);
                    self.stats.refreshed(
                        &self.dims,
                        table,
                        next.rows_of(table),
                        diff.len(),
                        interval,
                    );
                    if diff.is_empty() {
                        tracing::debug!(dimension = name.as_str(), "dimension refresh: no change");
                        continue;
                    }
                    let changed = diff.len();
                    tracing::info!(
                        dimension = name.as_str(),
                        rows = changed,
                        "dimension refresh: applying the change"
                    );
                    if self.updates.send(diff).is_err() {
                        return;
                    }
                    self.snapshot = next;
                    let notice = Notice::info(
                        "dimension_changed",
                        format!("dimension `{}`: {changed} rows changed", name.as_str()),
                        json!({ "dimension": name.as_str(), "rows_changed": changed }),
                    );
                    if let Err(e) = self.notices.notice(&notice) {
                        tracing::warn!(error = %e, "cannot send the dimension change to the alerts topic");
                    }
                }
                Err(e) => {
                    db = None;
                    let first = !backoff.contains_key(&table);
                    let wait = backoff
                        .get(&table)
                        .map_or(Duration::from_secs(1), |b| *b * 2)
                        .min(interval)
                        .min(Duration::from_secs(300));
                    backoff.insert(table, wait);
                    due.insert(table, Instant::now() + wait);
                    self.stats.failed(&self.dims, table, e.to_string(), wait);
                    tracing::warn!(dimension = name.as_str(), error = %e, retry_in = ?wait, "dimension refresh failed; the last good snapshot stays in force");
                    if first {
                        let notice = Notice {
                            kind: NoticeKind::Alert,
                            severity: "warning",
                            reason: "dimension_refresh_failed",
                            detail: format!("dimension `{}` cannot be read: {e}", name.as_str()),
                            data: json!({ "dimension": name.as_str() }),
                        };
                        if let Err(e) = self.notices.notice(&notice) {
                            tracing::warn!(error = %e, "cannot send the alert to the alerts topic");
                        }
                    }
                }
            }
        }
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
