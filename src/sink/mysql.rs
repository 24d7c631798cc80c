//! The MySQL/MariaDB writer: one transaction per batch, `INSERT … ON DUPLICATE KEY UPDATE` in
//! statements of up to `batch_rows` rows and `DELETE … IN (…)`, of a few sizes, each prepared
//! once per connection and kept. Deadlocks (1213), lock-wait timeouts (1205) and lost
//! connections are transient: the caller retries the whole transaction, on a new connection if
//! needed.
//!
//! On MariaDB 10.2.7 or later (unless `sink.mariadb_bulk = false`) the upserts go instead as
//! bulk executions (`COM_STMT_BULK_EXECUTE`) of the single-row statement, `batch_rows` rows of
//! parameters each: the rows are applied in the same order with the same effect, and the
//! server, which does not parse or plan a multi-row statement's rows, spends about half the
//! CPU per row (BENCHMARKS.md, fourteenth session). MySQL has no bulk execution. A wide table
//! with triggers gets multi-row statements too: MariaDB has applied bulk executions wrongly on
//! tables with triggers (MDEV-24411, an `ON DUPLICATE KEY UPDATE` bulk that inserted one row).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Params, Statement, TxOpts, Value};

use super::statements::{
    delete_sql, owned_ids_sql, row_params, rows_params, statement_chunks, upsert_sql, Param,
    WideTable,
};
use super::{SinkBatch, SinkError, TableWriter, WriteOptions};
use crate::dataflow::wide::WideRow;
use crate::db::DbSettings;
use crate::schema::{civil_time, format_timestamp, Dialect};

/// Writes a worker's share of the wide table in MySQL/MariaDB.
pub struct MysqlWriter {
    settings: DbSettings,
    table: WideTable,
    options: WriteOptions,
    conn: Option<Connection>,
}

/// A connection and the statements prepared on it, which live and die with it.
struct Connection {
    conn: Conn,
    /// Whether upserts go as bulk executions: asked for, and the server is a MariaDB that has
    /// them.
    bulk: bool,
    /// Upserts of n rows, by n: held so that each write sends only parameters, neither the
    /// statement's text (~100 KB at 1000 rows) nor a lookup of it in the driver's cache.
    upserts: HashMap<usize, Statement>,
    /// Deletes of n ids, by n.
    deletes: HashMap<usize, Statement>,
}

/// Statements the driver keeps prepared per connection: room for every size
/// [`statement_sizes`] gives (up to 13 each for upserts and deletes at the largest
/// `batch_rows`) and the rest. The driver closes the statement it evicts, which would break
/// one this writer holds.
const STATEMENT_CACHE: usize = 64;

/// The statement of `size` rows from `held`, prepared (from `sql(size)`) on first use.
fn prepared<'h>(
    tx: &mut mysql::Transaction<'_>,
    held: &'h mut HashMap<usize, Statement>,
    size: usize,
    sql: impl FnOnce(usize) -> String,
) -> Result<&'h Statement, mysql::Error> {
    Ok(match held.entry(size) {
        Entry::Occupied(held) => held.into_mut(),
        Entry::Vacant(place) => place.insert(tx.prep(sql(size))?),
    })
}

/// The first MariaDB release with bulk executions (`COM_STMT_BULK_EXECUTE`).
const FIRST_BULK_MARIADB: (u32, u32, u32) = (10, 2, 7);

/// Whether a server reporting `version` (`SELECT VERSION()`, e.g. `10.11.19-MariaDB-0+deb12u1`)
/// takes bulk executions: MariaDB from 10.2.7. MySQL reports no `MariaDB` and has none.
fn has_bulk_execution(version: &str) -> bool {
    if !version.contains("MariaDB") {
        return false;
    }
    let mut numbers = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next(), numbers.next(), numbers.next()) {
        (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) => {
            (major, minor, patch) >= FIRST_BULK_MARIADB
        }
        _ => false,
    }
}

/// Whether upserts into `table` may go as bulk executions on `conn`: the server has them, and
/// the table has no triggers (see the module's note).
fn bulk_is_safe(conn: &mut Conn, table: &str) -> Result<bool, mysql::Error> {
    let version: Option<String> = conn.query_first("SELECT VERSION()")?;
    let version = version.unwrap_or_default();
    if !has_bulk_execution(&version) {
        tracing::debug!(version, "sink: multi-row statements (no bulk executions)");
        return Ok(false);
    }
    let triggers: Option<u64> = conn.exec_first(
        "SELECT COUNT(*) FROM information_schema.TRIGGERS \
         WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = ?",
        (table,),
    )?;
    if triggers.unwrap_or(0) > 0 {
        tracing::info!(
            table,
            "sink: the wide table has triggers; writing multi-row statements, not bulk executions"
        );
        return Ok(false);
    }
    tracing::debug!(version, "sink: bulk executions");
    Ok(true)
}

fn classify(e: mysql::Error) -> SinkError {
    match &e {
        mysql::Error::MySqlError(server) if server.code == 1213 || server.code == 1205 => {
            SinkError::transient(e.to_string())
        }
        mysql::Error::MySqlError(_) => SinkError::permanent(e.to_string()),
        _ => SinkError::transient(e.to_string()),
    }
}

fn value(param: Param<'_>) -> Value {
    match param {
        Param::Null => Value::NULL,
        Param::Int(i) => Value::Int(i),
        Param::Text(t) => Value::Bytes(t.as_bytes().to_vec()),
        // As a date and time, which the server reads in the session's time zone (UTC) as it
        // would the same text, without formatting or allocating one.
        Param::Time(seconds) => {
            let t = civil_time(seconds);
            match u16::try_from(t.year) {
                Ok(year) => Value::Date(year, t.month, t.day, t.hour, t.minute, t.second, 0),
                Err(_) => Value::Bytes(format_timestamp(seconds).into_bytes()),
            }
        }
    }
}

impl MysqlWriter {
    pub fn connect(
        settings: DbSettings,
        table: WideTable,
        options: WriteOptions,
    ) -> Result<MysqlWriter, SinkError> {
        let mut writer = MysqlWriter {
            settings,
            table,
            options,
            conn: None,
        };
        writer.conn()?;
        Ok(writer)
    }

    /// Whether upserts go as bulk executions on the current connection (none: `false`).
    pub fn writes_bulk(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.bulk)
    }

    fn conn(&mut self) -> Result<&mut Connection, SinkError> {
        if self.conn.is_none() {
            let opts = self
                .settings
                .mysql_opts()
                .map_err(|e| SinkError::permanent(e.to_string()))?;
            let opts = OptsBuilder::from_opts(opts).stmt_cache_size(STATEMENT_CACHE);
            let connect_error = |e: mysql::Error| {
                SinkError::transient(format!("connect to {}: {e}", self.settings.target()))
            };
            let mut conn = Conn::new(opts).map_err(connect_error)?;
            let bulk = self.options.mariadb_bulk
                && bulk_is_safe(&mut conn, &self.table.name).map_err(connect_error)?;
            self.conn = Some(Connection {
                conn,
                bulk,
                upserts: HashMap::new(),
                deletes: HashMap::new(),
            });
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn write_in_transaction(
        &mut self,
        batch: &SinkBatch,
        process_time: i64,
    ) -> Result<(), mysql::Error> {
        let table = &self.table;
        let batch_rows = self.options.batch_rows;
        let Connection {
            conn,
            bulk,
            upserts,
            deletes,
        } = self.conn.as_mut().expect("connected before writing");
        let mut tx = conn.start_transaction(TxOpts::default())?;
        let rows_upserted: Vec<&WideRow> = batch.upserts().collect();
        let upsert_of = |n| upsert_sql(Dialect::Mysql, table, n);
        if *bulk && !rows_upserted.is_empty() {
            let statement = prepared(&mut tx, upserts, 1, upsert_of)?;
            for rows in rows_upserted.chunks(batch_rows) {
                let params = rows.iter().map(|row| {
                    Params::Positional(row_params(row, process_time).map(value).collect())
                });
                tx.exec_batch(statement, params)?;
            }
        } else {
            for rows in statement_chunks(&rows_upserted, batch_rows) {
                let params = rows_params(rows, process_time, value);
                let statement = prepared(&mut tx, upserts, rows.len(), upsert_of)?;
                tx.exec_drop(statement, Params::Positional(params))?;
            }
        }
        for ids in statement_chunks(&batch.deletes, batch_rows) {
            let params: Vec<Value> = ids.iter().map(|id| Value::Int(*id as i64)).collect();
            let statement = prepared(&mut tx, deletes, ids.len(), |n| delete_sql(&table.name, n))?;
            tx.exec_drop(statement, Params::Positional(params))?;
        }
        tx.commit()
    }
}

impl TableWriter for MysqlWriter {
    fn owned_ids(&mut self, index: usize, peers: usize) -> Result<Vec<u64>, SinkError> {
        let sql = owned_ids_sql(&self.table.name);
        let conn = &mut self.conn()?.conn;
        let ids: Result<Vec<i64>, mysql::Error> =
            conn.exec(sql, (peers as i64, index as i64, index as i64));
        ids.map(|ids| ids.into_iter().map(|id| id as u64).collect())
            .map_err(|e| {
                if !matches!(e, mysql::Error::MySqlError(_)) {
                    self.conn = None;
                }
                classify(e)
            })
    }

    fn write(&mut self, batch: &SinkBatch, process_time: i64) -> Result<(), SinkError> {
        self.conn()?;
        self.write_in_transaction(batch, process_time).map_err(|e| {
            if !matches!(e, mysql::Error::MySqlError(_)) {
                // The connection is in an unknown state: start over on a new one.
                self.conn = None;
            }
            classify(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::has_bulk_execution;

    #[test]
    fn bulk_execution_is_used_on_mariadb_from_10_2_7_only() {
        assert!(has_bulk_execution("10.11.19-MariaDB-0+deb12u1"));
        assert!(has_bulk_execution("10.2.7-MariaDB"));
        assert!(has_bulk_execution("11.4.2-MariaDB-log"));
        assert!(!has_bulk_execution("10.2.6-MariaDB"));
        assert!(!has_bulk_execution("10.1.48-MariaDB-0+deb9u2"));
        assert!(!has_bulk_execution("8.0.36"));
        assert!(!has_bulk_execution("8.4.0-MySQL Community Server"));
        assert!(!has_bulk_execution("MariaDB"));
    }
}
