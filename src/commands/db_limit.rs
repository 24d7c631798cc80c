//! The database's own write limit, for `wrongbook bench --sink db`: the final rows of the run,
//! read back from the wide table, loaded into a scratch copy of it by the fastest plain client
//! path — the `mariadb` command-line client fed 1000-row `INSERT … ON DUPLICATE KEY UPDATE`
//! statements from a file — on one connection, then on two in parallel. The engine's figure is
//! compared with these, measured in the same run against the same server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::db::{DbSettings, DbUrl, SqlValue};
use crate::schema::Dialect;
use crate::sink::statements::{upsert_clauses, WideTable};

/// Rows per statement of the reference load (the fastest plain client path).
const ROWS_PER_STATEMENT: usize = 1000;

/// The limit, measured.
#[derive(Debug, Clone, Serialize)]
pub struct DbLimit {
    pub rows: u64,
    /// Rows per second on one connection.
    pub one_connection: f64,
    /// Rows per second on two connections in parallel.
    pub two_connections: f64,
    pub client: String,
}

/// Why the limit could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum DbLimitError {
    #[error("measuring the database limit needs a MySQL/MariaDB database, not {0}")]
    NotMysql(String),
    #[error("measuring the database limit needs the `mariadb` (or `mysql`) command-line client on PATH; install it (Debian: mariadb-client) or pass --no-db-limit")]
    NoClient,
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("{0}")]
    Io(String),
    #[error("the {client} client failed loading {file}: {message}")]
    Client {
        client: String,
        file: String,
        message: String,
    },
}

/// Where and how to connect the command-line client.
struct ClientArgs {
    program: PathBuf,
    args: Vec<String>,
    password: String,
}

impl ClientArgs {
    fn of(settings: &DbSettings) -> Result<ClientArgs, DbLimitError> {
        if !matches!(settings.url, DbUrl::Mysql(_)) {
            return Err(DbLimitError::NotMysql(settings.target()));
        }
        let program = ["mariadb", "mysql"]
            .iter()
            .find_map(|name| find_on_path(name))
            .ok_or(DbLimitError::NoClient)?;
        let opts = settings.mysql_opts()?;
        let mut args = vec![
            "--batch".to_owned(),
            "--skip-column-names".to_owned(),
            format!("--host={}", opts.get_ip_or_hostname()),
            format!("--port={}", opts.get_tcp_port()),
            "--protocol=TCP".to_owned(),
        ];
        if let Some(user) = opts.get_user() {
            args.push(format!("--user={user}"));
        }
        if let Some(db) = opts.get_db_name() {
            args.push(format!("--database={db}"));
        }
        Ok(ClientArgs {
            program,
            args,
            // Passed in the environment, never on the command line where `ps` shows it.
            password: opts.get_pass().unwrap_or_default().to_owned(),
        })
    }

    fn name(&self) -> String {
        self.program
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// Starts the client reading `file`.
    fn start(&self, file: &Path) -> Result<std::process::Child, DbLimitError> {
        let input = std::fs::File::open(file)
            .map_err(|e| DbLimitError::Io(format!("{}: {e}", file.display())))?;
        Command::new(&self.program)
            .args(&self.args)
            .env("MYSQL_PWD", &self.password)
            .stdin(input)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DbLimitError::Io(format!("starting {}: {e}", self.program.display())))
    }

    /// Loads the files in parallel, one connection each; returns the wall time.
    fn load(&self, files: &[PathBuf]) -> Result<Duration, DbLimitError> {
        let started = Instant::now();
        let children = files
            .iter()
            .map(|f| self.start(f).map(|child| (f, child)))
            .collect::<Result<Vec<_>, _>>()?;
        for (file, child) in children {
            let out = child
                .wait_with_output()
                .map_err(|e| DbLimitError::Io(format!("waiting for the client: {e}")))?;
            if !out.status.success() {
                return Err(DbLimitError::Client {
                    client: self.name(),
                    file: file.display().to_string(),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        Ok(started.elapsed())
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Measures the limit with the rows of `table` (the wide table a run just wrote), in the scratch
/// table `{table}_db_limit`, which is dropped afterwards. `dir` holds the statement files.
pub fn measure(
    settings: &DbSettings,
    table: &WideTable,
    dir: &Path,
) -> Result<DbLimit, DbLimitError> {
    let client = ClientArgs::of(settings)?;
    let mut db = settings.connect()?;
    let scratch = WideTable {
        name: format!("{}_db_limit", table.name),
        extra_columns: table.extra_columns.clone(),
    };
    // Each row as a VALUES tuple, quoted by the server itself (QUOTE(NULL) is NULL).
    let tuple = table
        .columns()
        .map(|c| format!("QUOTE({c})"))
        .collect::<Vec<_>>()
        .join(",',',");
    let rows = db.query(&format!(
        "SELECT CONCAT('(',{tuple},')') FROM {} ORDER BY id",
        table.name
    ))?;
    let tuples: Vec<String> = rows
        .rows
        .into_iter()
        .filter_map(|row| row.into_iter().next().and_then(SqlValue::into_text))
        .collect();
    let count = tuples.len() as u64;
    let (head, tail) = upsert_clauses(Dialect::Mysql, &scratch);
    let statements: Vec<String> = tuples
        .chunks(ROWS_PER_STATEMENT)
        .map(|chunk| format!("{head} {} {tail};\n", chunk.join(",")))
        .collect();
    drop(tuples);
    let write = |name: &str, parts: &mut dyn Iterator<Item = &String>| {
        let path = dir.join(name);
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path)
                .map_err(|e| DbLimitError::Io(format!("{}: {e}", path.display())))?,
        );
        // The engine writes TIMESTAMPs in UTC; so does this.
        let io = |e: std::io::Error| DbLimitError::Io(format!("{}: {e}", path.display()));
        file.write_all(b"SET time_zone = '+00:00';\n").map_err(io)?;
        for statement in parts {
            file.write_all(statement.as_bytes()).map_err(io)?;
        }
        file.flush().map_err(io)?;
        Ok::<PathBuf, DbLimitError>(path)
    };
    let all = write("db-limit-all.sql", &mut statements.iter())?;
    let even = write("db-limit-even.sql", &mut statements.iter().step_by(2))?;
    let odd = write(
        "db-limit-odd.sql",
        &mut statements.iter().skip(1).step_by(2),
    )?;

    let fresh = |db: &mut crate::db::Db| -> Result<(), DbLimitError> {
        db.execute_script(&format!("DROP TABLE IF EXISTS {}", scratch.name))?;
        db.execute_script(&format!(
            "CREATE TABLE {} LIKE {}",
            scratch.name, table.name
        ))?;
        Ok(())
    };
    let _on_interrupt = super::bench::DropOnInterrupt::register(settings, &scratch.name);
    fresh(&mut db)?;
    let one = client.load(std::slice::from_ref(&all));
    let two = one.and_then(|one| {
        fresh(&mut db)?;
        client.load(&[even, odd]).map(|two| (one, two))
    });
    let dropped = db.execute_script(&format!("DROP TABLE IF EXISTS {}", scratch.name));
    let (one, two) = two?;
    dropped?;
    for file in ["db-limit-all.sql", "db-limit-even.sql", "db-limit-odd.sql"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    Ok(DbLimit {
        rows: count,
        one_connection: count as f64 / one.as_secs_f64().max(1e-9),
        two_connections: count as f64 / two.as_secs_f64().max(1e-9),
        client: client.name(),
    })
}
