//! Configuration: a TOML file (`config/*.toml`) in which every key can be overridden from the
//! environment (`WRONGBOOK_SECTION__KEY`, SPEC §10), with secrets that never print.
//!
//! Relative paths in a file (the dataflow spec, an SQLite database) are taken relative to the
//! file's own directory, so a job runs the same from any working directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "WRONGBOOK_";

/// Variables with the prefix that the command line reads itself (`--log`), not keys.
pub const COMMAND_LINE_VARS: [&str; 1] = ["WRONGBOOK_LOG"];

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// A secret (password): printed as `***` by `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for handing to a client library; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A duration written as `500ms`, `10s`, `30m`, `2h` or `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(text: &str) -> Result<HumanDuration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit (use ms, s, m, h or d)"))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` does not start with a whole number"))?;
        let millis = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{text}` (use ms, s, m, h or d)"
                ))
            }
        };
        number
            .checked_mul(millis)
            .map(|ms| HumanDuration(Duration::from_millis(ms)))
            .ok_or_else(|| format!("`{text}` is too long a duration"))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether `name` is a plain SQL identifier, safe to splice into a statement.
///
/// Table names come from configuration, never from events, and still only this pattern is
/// accepted: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// The whole configuration of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The dataflow spec file; empty means the spec built into the binary.
    pub spec: String,
    /// Worker threads per process.
    pub workers: usize,
    pub mysql: MysqlConfig,
    pub routing: RoutingConfig,
    pub sink: SinkConfig,
    pub engine: EngineConfig,
    pub kafka: KafkaConfig,
    pub checkpoint: CheckpointConfig,
    pub metrics: MetricsConfig,
    pub cluster: ClusterConfig,
    /// The directory of the file this was loaded from; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// The database holding the dimension tables, the routing table and the wide table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlConfig {
    /// `mysql://host:port/database` or `sqlite://path`.
    pub url: String,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// The routing table (the seed's `flink_routing_config`).
    pub table: String,
    pub poll_interval: HumanDuration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// The wide table.
    pub table: String,
    /// Rows per multi-row statement (or per bulk execution on MariaDB).
    pub batch_rows: usize,
    /// On MariaDB 10.2.7 or later, send upserts as one prepared single-row statement with an
    /// array of parameter rows (`COM_STMT_BULK_EXECUTE`) instead of multi-row statements:
    /// the server then parses and plans nothing per row, about half its CPU per row. `false`
    /// always writes multi-row statements (for a proxy in front of MariaDB that does not
    /// pass bulk executions through). A wide table with triggers gets multi-row statements
    /// either way.
    pub mariadb_bulk: bool,
    /// The session time zone times are written in.
    pub time_zone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Messages a source hands a worker at once (from a regular file, about this many: it is
    /// cut by bytes, by the mean length of its first lines).
    pub chunk_messages: usize,
    /// Messages a worker takes into one epoch at most.
    pub epoch_max_messages: usize,
    /// Epochs a worker may run ahead of the last one fully written, before it stops pulling.
    pub max_inflight_epochs: u64,
    /// Messages longer than this are dead letters (`message_too_large`).
    pub max_message_bytes: usize,
    /// A streaming source closes an epoch this often (one transaction per epoch and worker).
    pub epoch_interval: HumanDuration,
}

impl EngineConfig {
    /// Chunks a source may hold ready for one worker: an epoch's worth (at least 4, at most
    /// 64). The file source's workers share one queue of this many chunks per worker, and it
    /// waits only when that is full; a queue of a whole epoch lets the reader run that far
    /// ahead of the workers (on two workers of a two-core machine, when chunks were dealt
    /// strictly in turn, 4 chunks cost 4-9 % of the throughput against 16).
    pub fn source_queue_chunks(&self) -> usize {
        (self.epoch_max_messages / self.chunk_messages.max(1)).clamp(4, 64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub topic: String,
    pub alerts_topic: String,
    pub metrics_topic: String,
    /// How often a JSON snapshot of the job's counters goes to the metrics topic.
    pub metrics_interval: HumanDuration,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// How often the running job checkpoints its state.
    pub interval: HumanDuration,
    /// The directory checkpoints are written to (relative to the config file).
    pub dir: String,
}

/// Timely's cluster mode (SPEC §9): this process's place among the job's processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Processes of the job (`-n`); each runs `workers` worker threads.
    pub processes: usize,
    /// This process's index, 0-based (`-p`).
    pub process: usize,
    /// A file with one `host:port` per process, in process order (`-h`); needed when
    /// `processes > 1`.
    pub hostfile: String,
    /// How long to wait for every process to connect before giving up with an error that
    /// names the missing ones.
    pub connect_timeout: HumanDuration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            processes: 1,
            process: 0,
            hostfile: String::new(),
            connect_timeout: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// The operations endpoint and the threshold alerts (SPEC §8).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (`host:port`); empty to serve nothing.
    pub listen: String,
    /// End-to-end latency above this raises a critical alert.
    pub latency_critical: HumanDuration,
    /// A share of dead letters among the events of a metrics interval above this raises a
    /// warning (0.01 = 1 %).
    pub error_rate_warning: f64,
    /// Record and dimension state above this many bytes raises a warning.
    pub state_bytes_warning: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9249".into(),
            latency_critical: HumanDuration(Duration::from_secs(30)),
            error_rate_warning: 0.01,
            state_bytes_warning: 1 << 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            spec: String::new(),
            workers: 1,
            mysql: MysqlConfig::default(),
            routing: RoutingConfig::default(),
            sink: SinkConfig::default(),
            engine: EngineConfig::default(),
            kafka: KafkaConfig::default(),
            checkpoint: CheckpointConfig::default(),
            metrics: MetricsConfig::default(),
            cluster: ClusterConfig::default(),
            base_dir: PathBuf::from("."),
        }
    }
}

impl Default for MysqlConfig {
    fn default() -> Self {
        MysqlConfig {
            url: "mysql://127.0.0.1:3306/wrongbook".into(),
            username: "root".into(),
            password: Secret::default(),
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            table: "flink_routing_config".into(),
            poll_interval: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            table: "dwd_wrong_record_wide_delta".into(),
            batch_rows: 1000,
            mariadb_bulk: true,
            time_zone: "+00:00".into(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            chunk_messages: 1024,
            epoch_max_messages: 16_384,
            max_inflight_epochs: 4,
            max_message_bytes: 1 << 20,
            epoch_interval: HumanDuration(Duration::from_millis(200)),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "localhost:9092".into(),
            group_id: "wrongbook-wide-table-group".into(),
            topic: "wrongbook-events".into(),
            alerts_topic: "wrongbook-alerts".into(),
            metrics_topic: "wrongbook-metrics".into(),
            metrics_interval: HumanDuration(Duration::from_secs(10)),
            username: String::new(),
            password: Secret::default(),
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: HumanDuration(Duration::from_secs(10)),
            dir: "checkpoints".into(),
        }
    }
}

impl Config {
    /// Loads `path` (or only defaults when `None`), then applies `WRONGBOOK_*` overrides from
    /// the process environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
                    path: path.to_owned(),
                    cause,
                })?;
                let base = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_owned();
                Config::parse(&text, &path.display().to_string(), base, env)
            }
            None => Config::parse("", "<defaults>", PathBuf::from("."), env),
        }
    }

    /// Parses configuration `text` (named `file` in errors; relative paths resolve against
    /// `base_dir`), applies `WRONGBOOK_*` overrides from `env`, then validates.
    pub fn parse(
        text: &str,
        file: &str,
        base_dir: PathBuf,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let skeleton = toml::Table::try_from(Config::default())
            .expect("the default configuration serializes to TOML");
        for (var, value) in env {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if COMMAND_LINE_VARS.contains(&var.as_str()) {
                continue;
            }
            apply_env_override(&mut table, &skeleton, &var, key, &value)?;
        }
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    file: file.to_owned(),
                    message: e.to_string(),
                })?;
        config.base_dir = base_dir;
        config.validate()?;
        Ok(config)
    }

    /// Checks every key; also after command-line overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        if self.workers == 0 {
            return Err(invalid("workers", "must be at least 1".into()));
        }
        for (key, name) in [
            ("routing.table", &self.routing.table),
            ("sink.table", &self.sink.table),
        ] {
            if !is_identifier(name) {
                return Err(invalid(
                    key,
                    format!("`{name}` is not a plain SQL table name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
        }
        if self.cluster.processes == 0 {
            return Err(invalid("cluster.processes", "must be at least 1".into()));
        }
        if self.cluster.process >= self.cluster.processes {
            return Err(invalid(
                "cluster.process",
                format!(
                    "{} is not a process index of a {}-process job (0 to {})",
                    self.cluster.process,
                    self.cluster.processes,
                    self.cluster.processes - 1
                ),
            ));
        }
        if self.cluster.processes > 1 && self.cluster.hostfile.is_empty() {
            return Err(invalid(
                "cluster.hostfile",
                "a job of several processes needs a hostfile (-h FILE): one host:port per process"
                    .into(),
            ));
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:9249 (empty serves no endpoint)",
                    self.metrics.listen
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.metrics.error_rate_warning) {
            return Err(invalid(
                "metrics.error_rate_warning",
                "must be a share between 0 and 1 (0.01 = 1 %)".into(),
            ));
        }
        if self.routing.poll_interval.0.is_zero() {
            return Err(invalid("routing.poll_interval", "must be positive".into()));
        }
        if self.sink.batch_rows == 0 || self.sink.batch_rows > 3000 {
            return Err(invalid(
                "sink.batch_rows",
                "must be between 1 and 3000".into(),
            ));
        }
        if !is_time_zone(&self.sink.time_zone) {
            return Err(invalid(
                "sink.time_zone",
                format!("`{}` is not an offset like +00:00", self.sink.time_zone),
            ));
        }
        if self.engine.chunk_messages == 0 {
            return Err(invalid(
                "engine.chunk_messages",
                "must be at least 1".into(),
            ));
        }
        if self.engine.epoch_max_messages == 0 {
            return Err(invalid(
                "engine.epoch_max_messages",
                "must be at least 1".into(),
            ));
        }
        if self.engine.max_inflight_epochs == 0 {
            return Err(invalid(
                "engine.max_inflight_epochs",
                "must be at least 1".into(),
            ));
        }
        crate::db::DbUrl::parse(&self.mysql.url)
            .map_err(|e| invalid("mysql.url", e.to_string()))?;
        Ok(())
    }

    /// `path` resolved against the configuration file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The dataflow spec this configuration names (the built-in one when it names none).
    pub fn load_spec(&self) -> Result<crate::spec::Spec, crate::spec::SpecError> {
        if self.spec.is_empty() {
            Ok(crate::spec::Spec::builtin())
        } else {
            crate::spec::Spec::load(&self.resolve(&self.spec))
        }
    }

    /// The database connection settings, with an SQLite path resolved against the file.
    pub fn database(&self) -> crate::db::DbSettings {
        let url = crate::db::DbUrl::parse(&self.mysql.url).expect("validated at load");
        let url = match url {
            crate::db::DbUrl::Sqlite(path) => crate::db::DbUrl::Sqlite(self.resolve_path(&path)),
            mysql => mysql,
        };
        crate::db::DbSettings {
            url,
            username: self.mysql.username.clone(),
            password: self.mysql.password.clone(),
            time_zone: self.sink.time_zone.clone(),
        }
    }

    fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }
}

fn is_time_zone(tz: &str) -> bool {
    let b = tz.as_bytes();
    b.len() == 6
        && (b[0] == b'+' || b[0] == b'-')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b[3] == b':'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
}

/// Sets the key that `WRONGBOOK_A__B=value` names (`a.b`), typed like the default of that key.
fn apply_env_override(
    table: &mut toml::Table,
    skeleton: &toml::Table,
    var: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let env_error = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let (leaf, parents) = path.split_last().expect("split yields at least one part");
    let mut shape = skeleton;
    let mut target = table;
    for part in parents {
        shape = match shape.get(part) {
            Some(toml::Value::Table(t)) => t,
            _ => {
                return Err(env_error(format!(
                    "`{part}` is not a configuration section"
                )))
            }
        };
        let entry = target
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        target = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(env_error(format!("`{part}` in the file is not a section"))),
        };
    }
    let typed = match shape.get(leaf) {
        Some(toml::Value::Integer(_)) => value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| env_error(format!("`{}` expects a whole number", path.join("."))))?,
        Some(toml::Value::Boolean(_)) => value
            .trim()
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| env_error(format!("`{}` expects true or false", path.join("."))))?,
        Some(toml::Value::String(_)) => toml::Value::String(value.to_owned()),
        Some(_) => {
            return Err(env_error(format!(
                "`{}` is a section, not a value",
                path.join(".")
            )))
        }
        None => {
            return Err(env_error(format!(
                "there is no configuration key `{}`",
                path.join(".")
            )))
        }
    };
    target.insert(leaf.clone(), typed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_keys_with_their_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, "workers = 2\n[mysql]\nurl = \"sqlite://wb.db\"\n").unwrap();
        let config = Config::load_with_env(
            Some(&path),
            env(&[
                ("WRONGBOOK_WORKERS", "4"),
                ("WRONGBOOK_KAFKA__BOOTSTRAP_SERVERS", "k:9092"),
                ("WRONGBOOK_MYSQL__PASSWORD", "s3cret"),
                ("WRONGBOOK_SINK__MARIADB_BULK", "false"),
                // `--log`'s variable, which the command line reads: not a key.
                ("WRONGBOOK_LOG", "debug"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.workers, 4);
        assert_eq!(config.kafka.bootstrap_servers, "k:9092");
        assert_eq!(config.mysql.password.expose(), "s3cret");
        assert!(!config.sink.mariadb_bulk);
        assert!(!format!("{config:?}").contains("s3cret"));
        match config.database().url {
            crate::db::DbUrl::Sqlite(p) => assert_eq!(p, dir.path().join("wb.db")),
            other => panic!("expected sqlite, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_key_or_variable() {
        let err = Config::load_with_env(None, env(&[("WRONGBOOK_WORKERS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WRONGBOOK_WORKERS") && err.contains("whole number"),
            "{err}"
        );
        let err = Config::load_with_env(None, env(&[("WRONGBOOK_NOPE", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = Config::load_with_env(None, env(&[("WRONGBOOK_SINK__TABLE", "t;drop")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sink.table"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[sink]\ntabel = \"x\"\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml") && err.contains("tabel"), "{err}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            HumanDuration::parse("30m").unwrap().0,
            Duration::from_secs(1800)
        );
        assert_eq!(
            HumanDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert!(HumanDuration::parse("10").is_err());
        assert!(HumanDuration::parse("5 weeks").is_err());
    }

    #[test]
    fn a_source_queues_an_epoch_of_chunks_within_bounds() {
        let engine = |chunk_messages, epoch_max_messages| EngineConfig {
            chunk_messages,
            epoch_max_messages,
            ..EngineConfig::default()
        };
        assert_eq!(EngineConfig::default().source_queue_chunks(), 16);
        assert_eq!(engine(1024, 1024).source_queue_chunks(), 4);
        assert_eq!(engine(1, 1_000_000).source_queue_chunks(), 64);
    }
}
