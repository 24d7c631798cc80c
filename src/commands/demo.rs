//! `wrongbook demo`: the whole pipeline on embedded parts, with nothing installed. Generates
//! events, dimensions and routing rows, loads them into an SQLite file, replays the events
//! into the wide table, applies a dimension change that corrects rows already written, and
//! prints the summary and some rows.

use std::path::{Path, PathBuf};

use crate::commands::gen::{dims_sql, generate, routing_sql, write_jsonl, GenOptions};
use crate::commands::init_db::init_db;
use crate::commands::replay::{format_summary, replay, ReplayError, ReplayOptions};
use crate::config::Config;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the SQLite file, the events and the dead letters go.
    pub dir: PathBuf,
    pub events: usize,
    pub workers: usize,
    pub seed: u64,
    pub progress: bool,
}

/// Runs the demo; returns the text to print.
pub fn demo(opts: &DemoOptions) -> Result<String, ReplayError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        ReplayError::Input(format!("{what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(&opts.dir).map_err(|e| io("cannot create", &opts.dir, e))?;
    let db_path = opts.dir.join("wrongbook.db");
    let mut config = Config::default();
    config.mysql.url = format!("sqlite://{}", db_path.display());
    config.workers = opts.workers;

    println!("1/4 generating {} events (seed {})", opts.events, opts.seed);
    let gen_opts = GenOptions {
        events: opts.events,
        seed: opts.seed,
        ..GenOptions::default()
    };
    let generated = generate(&gen_opts);
    let events_path = opts.dir.join("events.jsonl");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&events_path).map_err(|e| io("cannot create", &events_path, e))?,
    );
    write_jsonl(&mut out, &generated.messages).map_err(|e| io("cannot write", &events_path, e))?;
    drop(out);
    let change_path = opts.dir.join("dims-change.sql");
    std::fs::write(&change_path, dims_sql(&generated.dims_changed))
        .map_err(|e| io("cannot write", &change_path, e))?;

    println!(
        "2/4 creating tables and loading dimensions + routing into {}",
        db_path.display()
    );
    let mut db = init_db(&config, None)?;
    db.execute_script(&dims_sql(&generated.dims))?;
    db.execute_script(&routing_sql(&config.routing.table))?;

    println!(
        "3/4 replaying into the wide table on {} worker(s), then applying a dimension change",
        opts.workers
    );
    let summary = replay(
        &config,
        &ReplayOptions {
            input: events_path.clone(),
            dims_after: Some(change_path),
            progress: opts.progress,
            ..ReplayOptions::default()
        },
    )?;

    println!("4/4 done\n");
    let mut text = format_summary(&summary);
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
        "\nfiles in {}: wrongbook.db (SQLite: dims, routing, wide table), events.jsonl, events.dead-letters.jsonl\n",
        opts.dir.display()
    ));
    Ok(text)
}
