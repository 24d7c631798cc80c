//! What every job command does before it runs: load the spec, reach the database, check the
//! wide table exists, read the routing table and the dimension snapshots.

use std::sync::Arc;

use crate::config::Config;
use crate::dataflow::route::{Route, RouteTable};
use crate::db::{DbError, DbSettings};
use crate::engine::EngineError;
use crate::sink::statements::WideTable;
use crate::source::dims::DimSnapshot;
use crate::source::routing::{read_routing_rows, RoutingRow};
use crate::spec::{Spec, SpecError};

/// Why a job could not run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A job's inputs from configuration and database.
pub struct Prepared {
    pub spec: Arc<Spec>,
    pub settings: DbSettings,
    /// The wide table to write.
    pub table: WideTable,
    /// The routing table as read now.
    pub routing_rows: Vec<RoutingRow>,
    pub dims: DimSnapshot,
}

/// Loads what a job needs; `table` overrides `sink.table`.
pub fn prepare(config: &Config, table: Option<&str>) -> Result<Prepared, JobError> {
    let spec = Arc::new(config.load_spec()?);
    let settings = config.database();
    let table = table.unwrap_or(&config.sink.table).to_owned();
    if !crate::config::is_identifier(&table) {
        return Err(JobError::Input(format!(
            "--table `{table}` is not a plain SQL table name"
        )));
    }
    let table = WideTable {
        name: table,
        extra_columns: spec.dimensions.extra_columns(),
    };
    let mut db = settings.connect()?;
    let columns: Vec<&str> = std::iter::once("id")
        .chain(table.extra_columns.iter().map(String::as_str))
        .collect();
    db.query(&format!(
        "SELECT {} FROM {} LIMIT 0",
        columns.join(", "),
        table.name
    ))
    .map_err(|e| {
        JobError::Input(format!(
            "{e}\n  hint: create the tables (and the columns the spec's lookups fill) with `wrongbook init-db -c <config>`"
        ))
    })?;
    let routing_rows = read_routing_rows(&mut db, &config.routing.table)?;
    log_routes(&RouteTable::build(routing_rows.clone(), &spec));
    let dims = DimSnapshot::read(&mut db, &spec.dimensions)?;
    tracing::info!(
        patterns = dims.patterns.len(),
        teaching_type_pts = dims.teaching_type_pts.len(),
        teaching_types = dims.teaching_types.len(),
        "read dimension snapshots"
    );
    Ok(Prepared {
        spec,
        settings,
        table,
        routing_rows,
        dims,
    })
}

fn log_routes(routes: &RouteTable) {
    let mut types: Vec<&str> = routes.rows.iter().map(|r| r.event_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    for event_type in types {
        match routes.route(event_type) {
            Some(Route::Process(r)) => {
                tracing::info!(event_type, processor = %r.processor, "route")
            }
            Some(Route::Disabled) => {
                tracing::info!(event_type, "route disabled: events are skipped")
            }
            Some(Route::UnknownProcessor(p)) => tracing::warn!(
                event_type,
                processor = %p,
                "route names an unknown processor: its events become dead letters"
            ),
            Some(Route::NoSchema) => tracing::warn!(
                event_type,
                "routed type has no schema in the dataflow spec: its events become dead letters"
            ),
            None => {}
        }
    }
}
