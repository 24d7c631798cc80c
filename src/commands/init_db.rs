//! `wrongbook init-db`: creates the seed's tables where missing (dimension tables, routing
//! table, wide table). Idempotent: existing tables and rows are left alone.

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::schema::{source_tables_ddl, wide_table_ddl, Dialect};

/// Creates the missing tables in the configured database; `table` overrides the wide table.
pub fn init_db(config: &Config, table: Option<&str>) -> Result<Db, DbError> {
    let settings = config.database();
    if let crate::db::DbUrl::Sqlite(path) = &settings.url {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Connect {
                target: settings.target(),
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
    }
    let mut db = settings.connect()?;
    let dialect = if db.is_sqlite() {
        Dialect::Sqlite
    } else {
        Dialect::Mysql
    };
    let table = table.unwrap_or(&config.sink.table);
    db.execute_script(&source_tables_ddl(dialect, &config.routing.table))?;
    db.execute_script(&wide_table_ddl(dialect, table))?;
    Ok(db)
}
