//! `wrongbook init-db`: creates the database and the seed's tables where missing (dimension
//! tables, routing table, wide table), and adds the wide-table columns the spec's lookup tables
//! fill. Idempotent: existing tables, columns and rows are left alone.

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::schema::{source_tables_ddl, wide_table_ddl};

/// Creates the configured database when missing, then its missing tables; `table` overrides
/// the wide table.
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
    let (mut db, created) = settings.connect_creating_database()?;
    if created {
        tracing::info!(database = %settings.target(), "created the database");
    }
    let dialect = db.dialect();
    let table = table.unwrap_or(&config.sink.table);
    db.execute_script(&source_tables_ddl(dialect, &config.routing.table))?;
    db.execute_script(&wide_table_ddl(dialect, table))?;
    let extra_columns = match config.load_spec() {
        Ok(spec) => spec.dimensions.extra_columns(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the dataflow spec: no lookup columns added");
            Vec::new()
        }
    };
    for column in extra_columns {
        // Identifiers from the spec are validated; a failing probe means the column is missing.
        if db
            .query(&format!("SELECT {column} FROM {table} LIMIT 0"))
            .is_err()
        {
            db.execute_script(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
            tracing::info!(table, column, "added the lookup column");
        }
    }
    Ok(db)
}
