//! The MySQL/MariaDB writer: one transaction per batch, `INSERT … ON DUPLICATE KEY UPDATE` in
//! statements of up to `batch_rows` rows and `DELETE … IN (…)`, prepared once per shape and
//! cached by the connection. Deadlocks (1213), lock-wait timeouts (1205) and lost connections
//! are transient: the caller retries the whole transaction, on a new connection if needed.

use mysql::prelude::Queryable;
use mysql::{Conn, TxOpts, Value};

use super::statements::{delete_sql, owned_ids_sql, row_params, upsert_sql, Param, WideTable};
use super::{SinkBatch, SinkError, TableWriter};
use crate::db::DbSettings;
use crate::schema::{civil_time, format_timestamp, Dialect};

/// Writes a worker's share of the wide table in MySQL/MariaDB.
pub struct MysqlWriter {
    settings: DbSettings,
    table: WideTable,
    batch_rows: usize,
    conn: Option<Conn>,
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
        batch_rows: usize,
    ) -> Result<MysqlWriter, SinkError> {
        let mut writer = MysqlWriter {
            settings,
            table,
            batch_rows,
            conn: None,
        };
        writer.conn()?;
        Ok(writer)
    }

    fn conn(&mut self) -> Result<&mut Conn, SinkError> {
        if self.conn.is_none() {
            let opts = self
                .settings
                .mysql_opts()
                .map_err(|e| SinkError::permanent(e.to_string()))?;
            let conn = Conn::new(opts).map_err(|e| {
                SinkError::transient(format!("connect to {}: {e}", self.settings.target()))
            })?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn write_in_transaction(
        &mut self,
        batch: &SinkBatch,
        process_time: i64,
    ) -> Result<(), mysql::Error> {
        let (table, batch_rows) = (self.table.clone(), self.batch_rows);
        let conn = self.conn.as_mut().expect("connected before writing");
        let mut tx = conn.start_transaction(TxOpts::default())?;
        for rows in batch.upserts.chunks(batch_rows) {
            let params: Vec<Value> = rows
                .iter()
                .flat_map(|row| row_params(row, process_time))
                .map(value)
                .collect();
            tx.exec_drop(upsert_sql(Dialect::Mysql, &table, rows.len()), params)?;
        }
        for ids in batch.deletes.chunks(batch_rows) {
            let params: Vec<Value> = ids.iter().map(|id| Value::Int(*id as i64)).collect();
            tx.exec_drop(delete_sql(&table.name, ids.len()), params)?;
        }
        tx.commit()
    }
}

impl TableWriter for MysqlWriter {
    fn owned_ids(&mut self, index: usize, peers: usize) -> Result<Vec<u64>, SinkError> {
        let sql = owned_ids_sql(&self.table.name);
        let conn = self.conn()?;
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
