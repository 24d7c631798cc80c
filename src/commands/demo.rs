//! `wrongbook demo`: the whole pipeline on embedded parts, with nothing installed: an
//! in-process Kafka-protocol broker (librdkafka's mock cluster) holding generated events, and
//! an SQLite file holding the dimensions, the routing table and the wide table. The job runs
//! until it has caught up with the topic, then prints the summary and some rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;

use crate::commands::gen::{dims_sql, produce_to_kafka, routing_sql, GenOptions};
use crate::commands::init_db::init_db;
use crate::commands::job::JobError;
use crate::commands::replay::format_summary;
use crate::commands::run::{run, RunOptions};
use crate::config::Config;

/// Messages a mock-cluster partition surely keeps (it keeps 5 MiB; generated events average
/// under 300 bytes).
const MOCK_MESSAGES_PER_PARTITION: usize = 12_000;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the SQLite file goes.
    pub dir: PathBuf,
    pub events: usize,
    pub workers: usize,
    pub seed: u64,
    pub partitions: i32,
}

/// Runs the demo; returns the text to print.
pub fn demo(opts: &DemoOptions) -> Result<String, JobError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        JobError::Input(format!("{what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(&opts.dir).map_err(|e| io("cannot create", &opts.dir, e))?;
    let db_path = opts.dir.join("wrongbook.db");
    let _ = std::fs::remove_file(&db_path);

    println!("1/4 starting an in-process Kafka-protocol broker (librdkafka mock cluster)");
    let cluster = MockCluster::new(1)
        .map_err(|e| JobError::Input(format!("cannot start the mock cluster: {e}")))?;
    let mut config = Config::default();
    config.mysql.url = format!("sqlite://{}", db_path.display());
    config.workers = opts.workers;
    config.kafka.bootstrap_servers = cluster.bootstrap_servers();
    // Any free port: a demo must not collide with a job serving the default one.
    config.metrics.listen = "127.0.0.1:0".into();
    config.checkpoint.dir = opts.dir.join("checkpoints").display().to_string();
    // The mock broker keeps at most 5 MiB per partition and drops older messages: spread the
    // events so that none is lost before the job reads it.
    let partitions = opts
        .partitions
        .max(opts.events.div_ceil(MOCK_MESSAGES_PER_PARTITION) as i32);
    for (topic, partitions) in [
        (&config.kafka.topic, partitions),
        (&config.kafka.alerts_topic, 1),
        (&config.kafka.metrics_topic, 1),
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .map_err(|e| JobError::Input(format!("cannot create topic {topic}: {e}")))?;
    }

    println!(
        "2/4 producing {} generated events (seed {}) to `{}` ({} partitions)",
        opts.events, opts.seed, config.kafka.topic, partitions
    );
    let gen_opts = GenOptions {
        events: opts.events,
        seed: opts.seed,
        ..GenOptions::default()
    };
    let (_, dims, _) = produce_to_kafka(&config.kafka, &gen_opts, None).map_err(JobError::Input)?;

    println!(
        "3/4 creating tables and loading dimensions + routing into {}",
        db_path.display()
    );
    let mut db = init_db(&config, None)?;
    db.execute_script(&dims_sql(&dims))?;
    db.execute_script(&routing_sql(&config.routing.table))?;

    println!(
        "4/4 running the job on {} worker(s) until it has caught up with the topic",
        opts.workers
    );
    let summary = run(
        &config,
        &RunOptions {
            workers: Some(opts.workers),
            until_caught_up: true,
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            progress_interval: Duration::from_secs(2),
            from_scratch: true,
            on_serving: Some(|addr| println!("    metrics: http://{addr}/metrics")),
        },
    )?;
    drop(cluster);

    let mut text = format!("\n{}", format_summary(&summary));
    let rows = db.query(&format!(
        "SELECT id, wrong_id, user_id, subject_name, pattern_name, teach_type_name, collect_time, fix_result_desc, event_type \
         FROM {} ORDER BY id LIMIT 5",
        config.sink.table
    ))?;
    let count = db.query(&format!("SELECT COUNT(*) FROM {}", config.sink.table))?;
    let count = count
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.to_int().ok().flatten())
        .unwrap_or(0);
    text.push_str(&format!(
        "\n{} has {count} rows; the first five:\n",
        config.sink.table
    ));
    text.push_str(&rows.columns.join(" | "));
    text.push('\n');
    for row in rows.rows {
        let cells: Vec<String> = row
            .into_iter()
            .map(|v| v.into_text().unwrap_or_else(|| "NULL".into()))
            .collect();
        text.push_str(&cells.join(" | "));
        text.push('\n');
    }
    text.push_str(&format!(
        "\nThe table is in {} (SQLite); dead letters went to the `{}` topic.\n",
        db_path.display(),
        config.kafka.alerts_topic
    ));
    Ok(text)
}
