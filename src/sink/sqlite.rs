//! The SQLite writer (the embedded default): the same batches as MySQL, as
//! `INSERT … ON CONFLICT(id) DO UPDATE` and `DELETE … IN (…)` in one transaction per batch.
//! Several workers share the file through WAL mode and a busy timeout.

use rusqlite::types::Value;
use rusqlite::Connection;

use super::statements::{delete_sql, owned_ids_sql, rows_params, upsert_sql, Param, WideTable};
use super::{SinkBatch, SinkError, TableWriter};
use crate::dataflow::wide::WideRow;
use crate::db::{open_sqlite, DbSettings, DbUrl};
use crate::schema::{format_timestamp, Dialect};

/// Writes a worker's share of the wide table in an SQLite file.
pub struct SqliteWriter {
    conn: Connection,
    table: WideTable,
    batch_rows: usize,
}

fn classify(e: rusqlite::Error) -> SinkError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            SinkError::transient(e.to_string())
        }
        _ => SinkError::permanent(e.to_string()),
    }
}

fn value(param: Param<'_>) -> Value {
    match param {
        Param::Null => Value::Null,
        Param::Int(i) => Value::Integer(i),
        Param::Text(t) => Value::Text(t.to_owned()),
        Param::Time(seconds) => Value::Text(format_timestamp(seconds)),
    }
}

impl SqliteWriter {
    pub fn open(
        settings: &DbSettings,
        table: WideTable,
        batch_rows: usize,
    ) -> Result<SqliteWriter, SinkError> {
        let DbUrl::Sqlite(path) = &settings.url else {
            unreachable!("SqliteWriter::open is only called for sqlite urls")
        };
        let conn = open_sqlite(path)
            .map_err(|e| SinkError::permanent(format!("open {}: {e}", path.display())))?;
        Ok(SqliteWriter {
            conn,
            table,
            batch_rows,
        })
    }
}

impl TableWriter for SqliteWriter {
    fn owned_ids(&mut self, index: usize, peers: usize) -> Result<Vec<u64>, SinkError> {
        let mut stmt = self
            .conn
            .prepare(&owned_ids_sql(&self.table.name))
            .map_err(classify)?;
        let ids = stmt
            .query_map((peers as i64, index as i64, index as i64), |row| {
                row.get::<_, i64>(0)
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>())
            .map_err(classify)?;
        Ok(ids.into_iter().map(|id| id as u64).collect())
    }

    fn write(&mut self, batch: &SinkBatch, process_time: i64) -> Result<(), SinkError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(classify)?;
        let upserts: Vec<&WideRow> = batch.upserts().collect();
        for rows in upserts.chunks(self.batch_rows) {
            let params: Vec<Value> = rows_params(rows, process_time, value);
            let mut stmt = tx
                .prepare_cached(&upsert_sql(Dialect::Sqlite, &self.table, rows.len()))
                .map_err(classify)?;
            stmt.execute(rusqlite::params_from_iter(params))
                .map_err(classify)?;
        }
        for ids in batch.deletes.chunks(self.batch_rows) {
            let mut stmt = tx
                .prepare_cached(&delete_sql(&self.table.name, ids.len()))
                .map_err(classify)?;
            stmt.execute(rusqlite::params_from_iter(ids.iter().map(|id| *id as i64)))
                .map_err(classify)?;
        }
        tx.commit().map_err(classify)
    }
}
