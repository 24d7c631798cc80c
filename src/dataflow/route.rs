//! Routing (SPEC §3): the route of an event type is its enabled routing row with the highest
//! `priority` (ties to the highest `id`); the row's `processor_class` resolves, through the
//! dataflow spec's aliases, to a processor, which is compiled against the type's schema once.
//!
//! Routing is decided when an event is ingested (as-of semantics): a later routing change never
//! re-routes past events, so the table is consulted per event, not joined as a collection.

use std::collections::HashMap;
use std::sync::Arc;

use crate::source::routing::RoutingRow;
use crate::spec::{EventSchema, ProcessorKind, Slot, Spec};

/// A type's processor, compiled against the type's payload schema.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    pub event_type: Arc<str>,
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

/// The routing table as applied: event type → route. Types without a row are unknown.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: HashMap<String, Route>,
    /// The rows it was built from, for logs and comparisons.
    pub rows: Vec<RoutingRow>,
}

impl RouteTable {
    /// Builds the table from routing rows, resolving processors through `spec`.
    pub fn build(rows: Vec<RoutingRow>, spec: &Spec) -> RouteTable {
        let mut winners: HashMap<&str, &RoutingRow> = HashMap::new();
        let mut routes = HashMap::new();
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
                        event_type: Arc::from(event_type),
                        processor: processor.name.clone(),
                        kind: processor.kind,
                        schema: schema.clone(),
                        slots,
                    }))
                }
            };
            routes.insert(event_type.to_owned(), route);
        }
        RouteTable { routes, rows }
    }

    /// The route of `event_type`; `None` when no routing row names it.
    pub fn route(&self, event_type: &str) -> Option<&Route> {
        self.routes.get(event_type)
    }

    /// Whether `event_type` has any routing row.
    pub fn knows(&self, event_type: &str) -> bool {
        self.routes.contains_key(event_type)
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
}
