//! Database connections: MySQL/MariaDB (`mysql://…`) or an embedded SQLite file (`sqlite://…`),
//! behind one small interface for the parts that read (dimension snapshots, the routing table) and
//! run scripts (`init-db`, `--dims-after`). The sink has its own writers in `sink/`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Secret;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("bad database url `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("{target}: {what}: {message}")]
    Query {
        target: String,
        what: String,
        message: String,
    },
}

/// Where the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// `mysql://host[:port]/database` (credentials may be in the url or in the config keys).
    Mysql(String),
    /// `sqlite://path`: an SQLite file, created when missing.
    Sqlite(PathBuf),
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<DbUrl, DbError> {
        let bad = |message: &str| DbError::Url {
            url: redact_url(url),
            message: message.to_owned(),
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad("sqlite:// needs a file path"));
            }
            Ok(DbUrl::Sqlite(PathBuf::from(path)))
        } else if let Some(rest) = url.strip_prefix("mysql://") {
            let (_, path) = rest
                .split_once('/')
                .ok_or_else(|| bad("mysql:// needs a database name: mysql://host:port/database"))?;
            let database = path.split('?').next().unwrap_or("");
            if !crate::config::is_identifier(database) {
                return Err(bad("the database name must be a plain identifier"));
            }
            Ok(DbUrl::Mysql(url.to_owned()))
        } else {
            Err(bad("use mysql://host:port/database or sqlite://path"))
        }
    }
}

/// A url with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Everything needed to open a connection.
#[derive(Debug, Clone)]
pub struct DbSettings {
    pub url: DbUrl,
    pub username: String,
    pub password: Secret,
    /// The session time zone (`+00:00`), in which TIMESTAMP values are read and written.
    pub time_zone: String,
}

impl DbSettings {
    /// A description of the target for messages: never includes the password.
    pub fn target(&self) -> String {
        match &self.url {
            DbUrl::Mysql(url) => redact_url(url),
            DbUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// Options for the `mysql` crate.
    pub fn mysql_opts(&self) -> Result<mysql::Opts, DbError> {
        let DbUrl::Mysql(url) = &self.url else {
            unreachable!("mysql_opts is only called for mysql urls")
        };
        let opts = mysql::Opts::from_url(url).map_err(|e| DbError::Url {
            url: redact_url(url),
            message: e.to_string(),
        })?;
        let mut builder = mysql::OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(Duration::from_secs(10)))
            .init(vec![format!("SET time_zone = '{}'", self.time_zone)]);
        if !self.username.is_empty() {
            builder = builder.user(Some(self.username.clone()));
        }
        if !self.password.expose().is_empty() {
            builder = builder.pass(Some(self.password.expose().to_owned()));
        }
        Ok(builder.into())
    }

    /// Opens a connection.
    pub fn connect(&self) -> Result<Db, DbError> {
        match &self.url {
            DbUrl::Mysql(_) => {
                let conn = mysql::Conn::new(self.mysql_opts()?)
                    .map_err(|e| self.mysql_connect_error(&e))?;
                Ok(self.mysql_db(conn))
            }
            DbUrl::Sqlite(path) => {
                let target = self.target();
                let conn = open_sqlite(path).map_err(|e| DbError::Connect {
                    target: target.clone(),
                    message: e.to_string(),
                })?;
                Ok(Db {
                    target,
                    conn: Conn::Sqlite(conn),
                })
            }
        }
    }

    /// Opens a connection as [`DbSettings::connect`] does, creating the MySQL database the url
    /// names first when the server has none (an SQLite file is created when opened). Also
    /// tells whether it created the database.
    pub fn connect_creating_database(&self) -> Result<(Db, bool), DbError> {
        let DbUrl::Mysql(_) = &self.url else {
            return Ok((self.connect()?, false));
        };
        let opts = self.mysql_opts()?;
        match mysql::Conn::new(opts.clone()) {
            Ok(conn) => return Ok((self.mysql_db(conn), false)),
            Err(e) if !is_unknown_database(&e) => return Err(self.mysql_connect_error(&e)),
            Err(_) => {}
        }
        // Checked by `DbUrl::parse`: a plain identifier, safe to quote.
        let name = opts
            .get_db_name()
            .expect("a mysql url names its database")
            .to_owned();
        let server = mysql::OptsBuilder::from_opts(opts).db_name(None::<String>);
        let mut conn = mysql::Conn::new(server).map_err(|e| self.mysql_connect_error(&e))?;
        use mysql::prelude::Queryable;
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS `{name}` DEFAULT CHARSET=utf8mb4"
        ))
        .map_err(|e| DbError::Query {
            target: self.target(),
            what: format!("creating the database {name}"),
            message: e.to_string(),
        })?;
        Ok((self.connect()?, true))
    }

    /// `conn` as a [`Db`] named by this target.
    fn mysql_db(&self, conn: mysql::Conn) -> Db {
        Db {
            target: self.target(),
            conn: Conn::Mysql(Box::new(conn)),
        }
    }

    /// Why a MySQL connection failed; a missing database names the command that creates it.
    fn mysql_connect_error(&self, error: &mysql::Error) -> DbError {
        DbError::Connect {
            target: self.target(),
            message: match is_unknown_database(error) {
                true => format!(
                    "{error}\n  hint: `wrongbook init-db -c CONFIG` creates the database and its \
                     tables"
                ),
                false => error.to_string(),
            },
        }
    }
}

/// Whether MySQL refused a connection because its database does not exist (`ER_BAD_DB_ERROR`).
fn is_unknown_database(error: &mysql::Error) -> bool {
    const ER_BAD_DB_ERROR: u16 = 1049;
    matches!(error, mysql::Error::MySqlError(e) if e.code == ER_BAD_DB_ERROR)
}

/// Opens an SQLite file for concurrent use by several writers (WAL, a generous busy timeout).
pub fn open_sqlite(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// A value read from a result set.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

impl SqlValue {
    /// The value as text (numbers rendered in decimal); `None` for NULL.
    pub fn into_text(self) -> Option<String> {
        match self {
            SqlValue::Null => None,
            SqlValue::Int(i) => Some(i.to_string()),
            SqlValue::Float(f) => Some(f.to_string()),
            SqlValue::Text(s) => Some(s),
        }
    }

    /// The value as an integer; `Err` with the value when it is not one.
    pub fn to_int(&self) -> Result<Option<i64>, String> {
        match self {
            SqlValue::Null => Ok(None),
            SqlValue::Int(i) => Ok(Some(*i)),
            SqlValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(Some(*f as i64)),
            SqlValue::Text(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("`{s}` is not an integer")),
            other => Err(format!("{other:?} is not an integer")),
        }
    }
}

/// A result set: column names and rows.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

impl Rows {
    /// The index of column `name` (case-insensitive).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    }
}

enum Conn {
    Mysql(Box<mysql::Conn>),
    Sqlite(rusqlite::Connection),
}

/// An open connection for reads and scripts.
pub struct Db {
    target: String,
    conn: Conn,
}

impl Db {
    /// Where this connection goes, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether this is an SQLite database (DDL differs).
    pub fn is_sqlite(&self) -> bool {
        matches!(self.conn, Conn::Sqlite(_))
    }

    /// The SQL dialect this connection speaks.
    pub fn dialect(&self) -> crate::schema::Dialect {
        if self.is_sqlite() {
            crate::schema::Dialect::Sqlite
        } else {
            crate::schema::Dialect::Mysql
        }
    }

    fn error(&self, what: &str, message: impl ToString) -> DbError {
        query_error(&self.target, what, message)
    }

    /// Runs a query without parameters and returns all rows.
    pub fn query(&mut self, sql: &str) -> Result<Rows, DbError> {
        let what = format!("query `{sql}`");
        match &mut self.conn {
            Conn::Mysql(conn) => {
                use mysql::prelude::Queryable;
                let result = conn.query_iter(sql);
                let mut result = match result {
                    Ok(r) => r,
                    Err(e) => return Err(query_error(&self.target, &what, e)),
                };
                let columns = result
                    .columns()
                    .as_ref()
                    .iter()
                    .map(|c| c.name_str().into_owned())
                    .collect();
                let mut rows = Vec::new();
                let mut failure = None;
                for row in result.by_ref() {
                    match row {
                        Ok(row) => rows.push(row.unwrap().into_iter().map(mysql_value).collect()),
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                }
                drop(result);
                match failure {
                    Some(message) => Err(query_error(&self.target, &what, message)),
                    None => Ok(Rows { columns, rows }),
                }
            }
            Conn::Sqlite(conn) => {
                let run = || -> rusqlite::Result<Rows> {
                    let mut stmt = conn.prepare(sql)?;
                    let columns: Vec<String> =
                        stmt.column_names().iter().map(|c| c.to_string()).collect();
                    let n = columns.len();
                    let rows = stmt
                        .query_map([], |row| {
                            (0..n)
                                .map(|i| row.get_ref(i).map(sqlite_value))
                                .collect::<rusqlite::Result<Vec<_>>>()
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    Ok(Rows { columns, rows })
                };
                run().map_err(|e| self.error(&what, e))
            }
        }
    }

    /// Runs a script of `;`-separated statements (DDL, dimension loads).
    pub fn execute_script(&mut self, sql: &str) -> Result<(), DbError> {
        let result = match &mut self.conn {
            Conn::Mysql(conn) => {
                use mysql::prelude::Queryable;
                // Every statement's result is read: an error in a later statement of the
                // script is reported, not dropped with the unread results.
                conn.query_iter(sql)
                    .and_then(|mut results| {
                        while let Some(set) = results.iter() {
                            for row in set {
                                row?;
                            }
                        }
                        Ok(())
                    })
                    .map_err(|e| e.to_string())
            }
            Conn::Sqlite(conn) => conn.execute_batch(sql).map_err(|e| e.to_string()),
        };
        result.map_err(|message| self.error("script", message))
    }
}

fn query_error(target: &str, what: &str, message: impl ToString) -> DbError {
    DbError::Query {
        target: target.to_owned(),
        what: what.to_owned(),
        message: message.to_string(),
    }
}

fn mysql_value(value: mysql::Value) -> SqlValue {
    match value {
        mysql::Value::NULL => SqlValue::Null,
        mysql::Value::Int(i) => SqlValue::Int(i),
        mysql::Value::UInt(u) => i64::try_from(u)
            .map(SqlValue::Int)
            .unwrap_or_else(|_| SqlValue::Text(u.to_string())),
        mysql::Value::Float(f) => SqlValue::Float(f64::from(f)),
        mysql::Value::Double(f) => SqlValue::Float(f),
        mysql::Value::Bytes(b) => SqlValue::Text(String::from_utf8_lossy(&b).into_owned()),
        other => SqlValue::Text(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

fn sqlite_value(value: rusqlite::types::ValueRef<'_>) -> SqlValue {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Int(i),
        ValueRef::Real(f) => SqlValue::Float(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            SqlValue::Text(String::from_utf8_lossy(t).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_redact() {
        assert_eq!(
            DbUrl::parse("sqlite://a/b.db").unwrap(),
            DbUrl::Sqlite(PathBuf::from("a/b.db"))
        );
        assert!(matches!(
            DbUrl::parse("mysql://127.0.0.1:3306/wb").unwrap(),
            DbUrl::Mysql(_)
        ));
        assert!(DbUrl::parse("mysql://127.0.0.1:3306").is_err());
        assert!(DbUrl::parse("jdbc:mysql://x/y").is_err());
        let err = DbUrl::parse("mysql://u:hunter2@h/x;y")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(redact_url("mysql://u:pw@h:1/d"), "mysql://u:***@h:1/d");
    }
}
