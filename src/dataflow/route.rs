//! Routing (SPEC §3): the route of an event type is its enabled routing row with the highest
//! `priority` (ties to the highest `id`); the row's `processor_class` resolves, through the
//! dataflow spec's aliases, to a processor, which is compiled against the type's schema once.
//!
//! Routing is decided when an event is ingested (as-of semantics): a later routing change never
//! re-routes past events, so the table is consulted per event, not joined as a collection.
//! The tables in force over time are a [`RoutingHistory`]: each version applies to the events
//! that entered the topic (by their Kafka timestamp) from the moment the version was seen, so
//! re-reading the same events after a restart routes them exactly as the first time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::dataflow::event_type::EventType;
use crate::source::routing::RoutingRow;
use crate::spec::{EventSchema, NameMap, ProcessorKind, Slot, Spec};

/// A type's processor, compiled against the type's payload schema.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub event_type: EventType,
    pub processor: String,
    pub kind: ProcessorKind,
    pub schema: EventSchema,
    /// For each slot, the index of the schema field that fills it.
    pub slots: [Option<usize>; Slot::COUNT],
}

/// What happens to events of one type.
#[derive(Debug, Clone)]
pub enum Route {
    /// Processed by this processor.
    Process(Arc<CompiledRoute>),
    /// The type has routing rows, none enabled: counted as skipped.
    Disabled,
    /// The enabled row names a processor the spec does not know: dead letter.
    UnknownProcessor(String),
    /// The type is routed but has no payload schema in the spec: dead letter.
    NoSchema,
}

/// The routing table as applied: event type → route, looked up for every event. Types without
/// a row are unknown.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: NameMap<Route>,
    /// The rows it was built from, for logs and comparisons.
    pub rows: Vec<RoutingRow>,
}

impl RouteTable {
    /// Builds the table from routing rows, resolving processors through `spec`.
    pub fn build(rows: Vec<RoutingRow>, spec: &Spec) -> RouteTable {
        let mut winners: HashMap<&str, &RoutingRow> = HashMap::new();
        let mut routes = crate::dataflow::FastMap::default();
        for row in &rows {
            routes
                .entry(row.event_type.clone())
                .or_insert(Route::Disabled);
            if !row.enabled {
                continue;
            }
            let best = winners.entry(&row.event_type).or_insert(row);
            if (row.priority, row.id) > (best.priority, best.id) {
                *best = row;
            }
        }
        for (event_type, row) in winners {
            let route = match (
                spec.processor(&row.processor_class),
                spec.event_types.get(event_type),
            ) {
                (None, _) => Route::UnknownProcessor(row.processor_class.clone()),
                (Some(_), None) => Route::NoSchema,
                (Some(processor), Some(schema)) => {
                    let mut slots = [None; Slot::COUNT];
                    for (slot, field) in &processor.fields {
                        slots[*slot as usize] = schema.field_index(field);
                    }
                    Route::Process(Arc::new(CompiledRoute {
                        event_type: EventType::intern(event_type),
                        processor: processor.name.clone(),
                        kind: processor.kind,
                        schema: schema.clone(),
                        slots,
                    }))
                }
            };
            routes.insert(event_type.to_owned(), route);
        }
        RouteTable {
            routes: routes.into_iter().collect(),
            rows,
        }
    }

    /// The route of `event_type`; `None` when no routing row names it.
    #[inline]
    pub fn route(&self, event_type: &str) -> Option<&Route> {
        self.routes.get(event_type)
    }
}

/// One routing table in force from a moment on.
#[derive(Debug, Clone)]
pub struct RoutingVersion {
    /// 1 for the first table a job applied, then one more per applied change.
    pub version: u64,
    /// Events whose Kafka timestamp (ms) is at or after this use this table.
    pub from_ms: i64,
    pub table: Arc<RouteTable>,
}

/// The routing tables in force over time, oldest first; never empty.
#[derive(Debug, Clone)]
pub struct RoutingHistory {
    versions: Vec<RoutingVersion>,
}

/// A routing history as stored: each version's rows, not its compiled table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHistory {
    pub versions: Vec<StoredVersion>,
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub version: u64,
    pub from_ms: i64,
    pub rows: Vec<RoutingRow>,
}

impl RoutingHistory {
    /// One table for all events.
    pub fn single(table: RouteTable) -> RoutingHistory {
        RoutingHistory {
            versions: vec![RoutingVersion {
                version: 1,
                from_ms: i64::MIN,
                table: Arc::new(table),
            }],
        }
    }

    /// Compiles a stored history against `spec`; `None` when it holds no version.
    pub fn from_stored(stored: &StoredHistory, spec: &Spec) -> Option<RoutingHistory> {
        let mut versions: Vec<RoutingVersion> = stored
            .versions
            .iter()
            .map(|v| RoutingVersion {
                version: v.version,
                from_ms: v.from_ms,
                table: Arc::new(RouteTable::build(v.rows.clone(), spec)),
            })
            .collect();
        versions.sort_by_key(|v| (v.from_ms, v.version));
        (!versions.is_empty()).then_some(RoutingHistory { versions })
    }

    /// The history as stored.
    pub fn to_stored(&self) -> StoredHistory {
        StoredHistory {
            versions: self
                .versions
                .iter()
                .map(|v| StoredVersion {
                    version: v.version,
                    from_ms: v.from_ms,
                    rows: v.table.rows.clone(),
                })
                .collect(),
        }
    }

    /// The history with `table` in force from `from_ms` on.
    pub fn with(&self, table: RouteTable, from_ms: i64) -> RoutingHistory {
        let mut versions = self.versions.clone();
        let from_ms = from_ms.max(self.latest().from_ms);
        versions.push(RoutingVersion {
            version: self.latest().version + 1,
            from_ms,
            table: Arc::new(table),
        });
        RoutingHistory { versions }
    }

    /// The newest version.
    pub fn latest(&self) -> &RoutingVersion {
        self.versions
            .last()
            .expect("a routing history is never empty")
    }

    /// The table for an event with Kafka timestamp `timestamp_ms`; the newest for events
    /// without one (files and memory are read with the routing of their run).
    pub fn at(&self, timestamp_ms: Option<i64>) -> &RouteTable {
        let Some(ts) = timestamp_ms.filter(|_| self.versions.len() > 1) else {
            return &self.latest().table;
        };
        let after = self.versions.partition_point(|v| v.from_ms <= ts);
        &self.versions[after.saturating_sub(1)].table
    }
}

/// The routing history a running job uses: the routing watcher publishes new versions, the
/// workers pick them up between batches.
#[derive(Debug)]
pub struct Routing {
    history: RwLock<Arc<RoutingHistory>>,
    version: AtomicU64,
}

impl Routing {
    pub fn new(history: RoutingHistory) -> Arc<Routing> {
        Arc::new(Routing {
            version: AtomicU64::new(history.latest().version),
            history: RwLock::new(Arc::new(history)),
        })
    }

    /// A routing that never changes.
    pub fn fixed(table: RouteTable) -> Arc<Routing> {
        Routing::new(RoutingHistory::single(table))
    }

    /// The current history.
    pub fn current(&self) -> Arc<RoutingHistory> {
        self.history.read().expect("routing lock").clone()
    }

    /// The newest version number: cheap to poll.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Makes `history` current.
    pub fn publish(&self, history: RoutingHistory) {
        let version = history.latest().version;
        *self.history.write().expect("routing lock") = Arc::new(history);
        self.version.store(version, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, event_type: &str, class: &str, enabled: bool, priority: i64) -> RoutingRow {
        RoutingRow {
            id,
            event_type: event_type.into(),
            processor_class: class.into(),
            enabled,
            hot_deployable: true,
            priority,
            version: None,
        }
    }

    fn processor_of(table: &RouteTable, t: &str) -> String {
        match table.route(t) {
            Some(Route::Process(r)) => r.processor.clone(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn highest_priority_enabled_row_wins_ties_to_highest_id() {
        let spec = Spec::builtin();
        let table = RouteTable::build(
            vec![
                row(
                    1,
                    "wrongbook_add",
                    "com.flink.realtime.processor.impl.WrongbookAddProcessor",
                    true,
                    100,
                ),
                row(2, "wrongbook_add", "wrongbook_fix", true, 50),
                row(3, "wrongbook_fix", "wrongbook_add", true, 100),
                row(4, "wrongbook_fix", "wrongbook_fix", true, 100),
                row(5, "wrongbook_fix", "wrongbook_delete", false, 999),
                row(6, "wrongbook_delete", "wrongbook_delete", false, 90),
                row(7, "wrongbook_review", "com.example.Review", true, 1),
                row(8, "wrongbook_other", "wrongbook_add", true, 1),
            ],
            &spec,
        );
        assert_eq!(processor_of(&table, "wrongbook_add"), "wrongbook_add");
        assert_eq!(processor_of(&table, "wrongbook_fix"), "wrongbook_fix");
        assert!(matches!(
            table.route("wrongbook_delete"),
            Some(Route::Disabled)
        ));
        assert!(matches!(
            table.route("wrongbook_review"),
            Some(Route::UnknownProcessor(_))
        ));
        assert!(matches!(
            table.route("wrongbook_other"),
            Some(Route::NoSchema)
        ));
        assert!(table.route("nope").is_none());
    }

    #[test]
    fn few_routes_and_many_find_the_same_types() {
        let spec = Spec::builtin();
        for count in [
            1,
            NameMap::<Route>::SEARCHED,
            NameMap::<Route>::SEARCHED + 1,
            40,
        ] {
            // Names of the lengths the word-by-word comparison tells apart in different ways.
            let types: Vec<String> = (0..count)
                .map(|i| format!("{}{i}", "t".repeat(i % 20)))
                .collect();
            let rows = types
                .iter()
                .enumerate()
                .map(|(i, t)| row(i as i64, t, "wrongbook_add", i % 3 != 0, 1))
                .collect();
            let table = RouteTable::build(rows, &spec);
            for (i, t) in types.iter().enumerate() {
                // The spec has no schema for these types: an enabled row routes to that.
                let expected = if i % 3 != 0 {
                    "Some(NoSchema)"
                } else {
                    "Some(Disabled)"
                };
                assert_eq!(processor_of(&table, t), expected, "{t} of {count}");
            }
            for unknown in ["", "t", "tt0", "wrongbook_add", "0 "] {
                if !types.iter().any(|t| t == unknown) {
                    assert!(table.route(unknown).is_none(), "{unknown} of {count}");
                }
            }
        }
    }

    #[test]
    fn a_history_routes_each_event_by_the_version_in_force_at_its_timestamp() {
        let spec = Spec::builtin();
        let disabled = RouteTable::build(
            vec![row(1, "wrongbook_delete", "wrongbook_delete", false, 1)],
            &spec,
        );
        let enabled = RouteTable::build(
            vec![row(1, "wrongbook_delete", "wrongbook_delete", true, 1)],
            &spec,
        );
        let history = RoutingHistory::single(disabled).with(enabled, 1_000);
        let is_enabled = |ts| {
            matches!(
                history.at(ts).route("wrongbook_delete"),
                Some(Route::Process(_))
            )
        };
        assert!(!is_enabled(Some(999)));
        assert!(is_enabled(Some(1_000)));
        assert!(is_enabled(Some(5_000)));
        assert!(
            is_enabled(None),
            "events without a timestamp use the newest"
        );
        assert_eq!(history.latest().version, 2);

        let stored = history.to_stored();
        let back = RoutingHistory::from_stored(&stored, &spec).expect("two versions");
        assert_eq!(back.to_stored(), stored);
    }
}
