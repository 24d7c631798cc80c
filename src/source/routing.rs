//! Reads the routing table (the seed's `flink_routing_config`, SPEC §3) from the database,
//! and, while a job runs, polls it: a change is applied to events that enter the topic from
//! then on (rows with `hot_deployable = 0` wait for a restart), logged, sent to the alerts topic
//! as an `info` record, and added to the routing history kept beside the checkpoints, so a
//! restart routes re-read events as they were routed the first time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::dataflow::route::{RouteTable, Routing, RoutingHistory, StoredHistory};
use crate::db::{Db, DbError, DbSettings, Rows, SqlValue};
use crate::sink::dead_letters::{DeadLetterSink, Notice};
use crate::spec::Spec;

/// One row of the routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingRow {
    pub id: i64,
    pub event_type: String,
    pub processor_class: String,
    pub enabled: bool,
    pub hot_deployable: bool,
    pub priority: i64,
    pub version: Option<String>,
}

/// Reads every row of routing table `table` (a validated identifier).
pub fn read_routing_rows(db: &mut Db, table: &str) -> Result<Vec<RoutingRow>, DbError> {
    let sql = format!(
        "SELECT id, event_type, processor_class, enabled, hot_deployable, priority, version \
         FROM {table} ORDER BY id"
    );
    let rows = db.query(&sql)?;
    rows_to_routing(rows).map_err(|message| DbError::Query {
        target: db.target().to_owned(),
        what: format!("routing table `{table}`"),
        message,
    })
}

fn rows_to_routing(rows: Rows) -> Result<Vec<RoutingRow>, String> {
    rows.rows
        .into_iter()
        .map(|row| {
            let mut cells = row.into_iter();
            let mut next = || cells.next().unwrap_or(SqlValue::Null);
            let id = next().to_int()?.ok_or("a row has a NULL id")?;
            let text = |v: SqlValue, name: &str| {
                v.into_text()
                    .ok_or_else(|| format!("row {id} has a NULL {name}"))
            };
            let event_type = text(next(), "event_type")?;
            let processor_class = text(next(), "processor_class")?;
            let flag =
                |v: SqlValue, default: bool| v.to_int().map(|i| i.map_or(default, |i| i != 0));
            Ok(RoutingRow {
                id,
                event_type,
                processor_class,
                enabled: flag(next(), true)?,
                hot_deployable: flag(next(), true)?,
                priority: next().to_int()?.unwrap_or(100),
                version: next().into_text(),
            })
        })
        .collect()
}

/// The file, beside the checkpoints, that keeps a job's routing history: one per process in
/// cluster mode (each process polls the routing table itself).
pub fn history_file(dir: &Path, process: usize, processes: usize) -> PathBuf {
    if processes > 1 {
        dir.join(format!("routing-history-{process}.json"))
    } else {
        dir.join("routing-history.json")
    }
}

/// Reads the routing history at `path`; `None` when there is none yet.
pub fn load_history(path: &Path) -> Result<Option<StoredHistory>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a routing history: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Writes the routing history to `path`, atomically (a crash leaves the old or the new one).
pub fn save_history(path: &Path, history: &StoredHistory) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let temp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(history).expect("a routing history serializes");
    std::fs::write(&temp, bytes)
        .and_then(|()| std::fs::File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Milliseconds since the Unix epoch, the scale of Kafka timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The routing history a job starts with: the one stored at `path` (when there is one) with
/// the table as read now in force from now on, or the table alone. Stored back.
pub fn start_history(
    path: &Path,
    rows: Vec<RoutingRow>,
    spec: &Spec,
) -> Result<RoutingHistory, String> {
    let history = compose_history(load_history(path)?, rows, spec);
    save_history(path, &history.to_stored())?;
    Ok(history)
}

/// The routing history a replay of the topic uses: the live job's (from `path`, unchanged on
/// disk), so replayed events are routed as the job routed them.
pub fn replay_history(
    path: &Path,
    rows: Vec<RoutingRow>,
    spec: &Spec,
) -> Result<RoutingHistory, String> {
    Ok(compose_history(load_history(path)?, rows, spec))
}

fn compose_history(
    stored: Option<StoredHistory>,
    rows: Vec<RoutingRow>,
    spec: &Spec,
) -> RoutingHistory {
    match stored.and_then(|s| RoutingHistory::from_stored(&s, spec)) {
        Some(history) if history.latest().table.rows == rows => history,
        Some(history) => {
            for change in row_changes(&history.latest().table.rows, &rows) {
                tracing::info!(change = %change, "routing changed while the job was stopped");
            }
            history.with(RouteTable::build(rows, spec), now_ms())
        }
        None => RoutingHistory::single(RouteTable::build(rows, spec)),
    }
}

/// The rows to apply when the table now reads `fresh` and `applied` is in force: every change
/// of a row whose old and new versions are both hot-deployable (a missing row counts as
/// hot-deployable); other rows keep their applied version until a restart. Returns the rows and
/// the changes held back.
pub fn hot_rows(applied: &[RoutingRow], fresh: &[RoutingRow]) -> (Vec<RoutingRow>, Vec<String>) {
    let old: BTreeMap<i64, &RoutingRow> = applied.iter().map(|r| (r.id, r)).collect();
    let new: BTreeMap<i64, &RoutingRow> = fresh.iter().map(|r| (r.id, r)).collect();
    let ids: BTreeSet<i64> = old.keys().chain(new.keys()).copied().collect();
    let mut rows = Vec::with_capacity(ids.len());
    let mut held = Vec::new();
    for id in ids {
        let (before, after) = (old.get(&id).copied(), new.get(&id).copied());
        let hot = |row: Option<&RoutingRow>| row.is_none_or(|r| r.hot_deployable);
        let chosen = if before == after || (hot(before) && hot(after)) {
            after
        } else {
            held.push(describe_change(before, after));
            before
        };
        rows.extend(chosen.cloned());
    }
    (rows, held)
}

fn describe_row(row: &RoutingRow) -> String {
    format!(
        "id {} `{}` -> `{}` (enabled {}, priority {}, hot_deployable {})",
        row.id,
        row.event_type,
        row.processor_class,
        u8::from(row.enabled),
        row.priority,
        u8::from(row.hot_deployable)
    )
}

fn describe_change(before: Option<&RoutingRow>, after: Option<&RoutingRow>) -> String {
    match (before, after) {
        (None, Some(row)) => format!("added {}", describe_row(row)),
        (Some(row), None) => format!("removed {}", describe_row(row)),
        (Some(a), Some(b)) => format!("changed {} to {}", describe_row(a), describe_row(b)),
        (None, None) => String::new(),
    }
}

/// The row-level changes from `old` to `new`, described.
pub fn row_changes(old: &[RoutingRow], new: &[RoutingRow]) -> Vec<String> {
    let before: BTreeMap<i64, &RoutingRow> = old.iter().map(|r| (r.id, r)).collect();
    let after: BTreeMap<i64, &RoutingRow> = new.iter().map(|r| (r.id, r)).collect();
    let ids: BTreeSet<i64> = before.keys().chain(after.keys()).copied().collect();
    ids.into_iter()
        .filter(|id| before.get(id) != after.get(id))
        .map(|id| describe_change(before.get(&id).copied(), after.get(&id).copied()))
        .collect()
}

/// Polls the routing table while a job runs.
pub struct RoutingWatcher {
    pub settings: DbSettings,
    pub table: String,
    pub interval: Duration,
    pub spec: Arc<Spec>,
    pub routing: Arc<Routing>,
    /// Where the history is kept (beside the checkpoints); `None` keeps it in memory.
    pub history_file: Option<PathBuf>,
    pub notices: Arc<dyn DeadLetterSink>,
    pub stop: Arc<AtomicBool>,
}

impl RoutingWatcher {
    /// Polls on a thread of its own until `stop` is set.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("wrongbook-routing".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let mut db: Option<Db> = None;
        let mut held_logged: BTreeSet<String> = BTreeSet::new();
        let mut failing = false;
        let mut next_poll = Instant::now() + self.interval;
        while !self.stop.load(Ordering::Relaxed) {
            if Instant::now() < next_poll {
                std::thread::sleep(Duration::from_millis(50).min(self.interval));
                continue;
            }
            next_poll = Instant::now() + self.interval;
            let read = match db.as_mut() {
                Some(db) => read_routing_rows(db, &self.table),
                None => self.settings.connect().and_then(|mut fresh| {
                    let rows = read_routing_rows(&mut fresh, &self.table);
                    db = Some(fresh);
                    rows
                }),
            };
            let fresh = match read {
                Ok(rows) => {
                    if failing {
                        tracing::info!(table = %self.table, "the routing table is readable again");
                        failing = false;
                    }
                    rows
                }
                Err(e) => {
                    db = None;
                    if !failing {
                        tracing::warn!(table = %self.table, error = %e, "cannot poll the routing table; the applied routing stays in force, retrying every poll interval");
                        failing = true;
                    }
                    continue;
                }
            };
            let history = self.routing.current();
            let applied = &history.latest().table.rows;
            let (rows, held) = hot_rows(applied, &fresh);
            for change in held {
                if held_logged.insert(change.clone()) {
                    tracing::warn!(change = %change, "routing change of a row with hot_deployable = 0: it applies at the next restart");
                }
            }
            if &rows == applied {
                continue;
            }
            let changes = row_changes(applied, &rows);
            let from_ms = now_ms();
            let next = history.with(RouteTable::build(rows, &self.spec), from_ms);
            let version = next.latest().version;
            if let Some(path) = &self.history_file {
                // The history must be durable before any event is routed by the new version.
                if let Err(e) = save_history(path, &next.to_stored()) {
                    tracing::error!(error = %e, "cannot store the routing history; the change is not applied yet");
                    continue;
                }
            }
            self.routing.publish(next);
            for change in &changes {
                tracing::info!(version, change = %change, "routing change applied");
            }
            let notice = Notice::info(
                "routing_changed",
                format!("routing version {version}: {}", changes.join("; ")),
                json!({ "version": version, "from_ms": from_ms, "changes": changes }),
            );
            if let Err(e) = self.notices.notice(&notice) {
                tracing::warn!(error = %e, "cannot send the routing change to the alerts topic");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, enabled: bool, hot: bool) -> RoutingRow {
        RoutingRow {
            id,
            event_type: "wrongbook_delete".into(),
            processor_class: "wrongbook_delete".into(),
            enabled,
            hot_deployable: hot,
            priority: 1,
            version: None,
        }
    }

    #[test]
    fn changes_of_rows_that_are_not_hot_deployable_wait_for_a_restart() {
        let applied = vec![row(1, false, true), row(2, false, false)];
        let fresh = vec![row(1, true, true), row(2, true, false), row(3, true, true)];
        let (rows, held) = hot_rows(&applied, &fresh);
        assert_eq!(
            rows,
            vec![row(1, true, true), row(2, false, false), row(3, true, true)]
        );
        assert_eq!(held.len(), 1, "{held:?}");
        // Turning hot deployment off is itself a change that waits.
        let (rows, held) = hot_rows(&[row(1, false, true)], &[row(1, true, false)]);
        assert_eq!(rows, vec![row(1, false, true)]);
        assert_eq!(held.len(), 1);
        // Removing a hot-deployable row applies at once.
        let (rows, held) = hot_rows(&[row(1, true, true)], &[]);
        assert!(rows.is_empty() && held.is_empty());
    }

    #[test]
    fn a_history_survives_a_restart_and_gains_a_version_when_the_table_changed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = history_file(dir.path(), 0, 1);
        let spec = Spec::builtin();
        let first = start_history(&file, vec![row(1, false, true)], &spec).expect("first start");
        assert_eq!(first.latest().version, 1);
        let same =
            start_history(&file, vec![row(1, false, true)], &spec).expect("restart, same table");
        assert_eq!(same.latest().version, 1);
        let changed =
            start_history(&file, vec![row(1, true, false)], &spec).expect("restart, changed table");
        assert_eq!(changed.latest().version, 2);
        assert_eq!(changed.latest().table.rows, vec![row(1, true, false)]);
        let stored = load_history(&file).expect("readable").expect("stored");
        assert_eq!(stored.versions.len(), 2);
    }
}
