//! Reads the routing table (the seed's `flink_routing_config`, SPEC §3) from the database.

use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError, Rows, SqlValue};

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
