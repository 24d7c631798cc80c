//! `wrongbook replay --input FILE.jsonl`: bounded re-processing of a dump. Reads the routing
//! table and the dimension snapshots from the database, runs the dataflow on N workers, leaves
//! the wide table exactly equal to what the events compute (reconciling whatever it held), and
//! prints a summary of outcomes by type and reason, rows written and events/s.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::commands::job::{prepare, JobError, Prepared};
use crate::commands::progress::ProgressDisplay;
use crate::config::Config;
use crate::engine::{run_pipeline, LaterDims, Pipeline, RunSummary};
use crate::sink::dead_letters::DeadLetterFile;
use crate::sink::{SinkStats, SinkTarget};
use crate::source::dims::DimSnapshot;
use crate::source::file::{BoundedInput, SourceProgress};

/// What to replay and how.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub input: PathBuf,
    /// Workers; the configuration's `workers` when `None`.
    pub workers: Option<usize>,
    /// The dead-letter file; beside the input when `None`.
    pub dead_letters: Option<PathBuf>,
    /// SQL applied to the dimension tables after the events are written; the new snapshot's
    /// difference then corrects the affected rows.
    pub dims_after: Option<PathBuf>,
    /// Write this table instead of `sink.table`.
    pub table: Option<String>,
    /// Write nothing to the wide table.
    pub dry_run: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The default dead-letter file of `input`: `events.jsonl` → `events.dead-letters.jsonl`.
pub fn default_dead_letter_path(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    input.with_file_name(format!("{stem}.dead-letters.jsonl"))
}

/// Runs the replay and returns its summary.
pub fn replay(config: &Config, opts: &ReplayOptions) -> Result<RunSummary, JobError> {
    if !opts.input.is_file() {
        return Err(JobError::Input(format!(
            "input {} is not a readable file",
            opts.input.display()
        )));
    }
    let Prepared {
        spec,
        settings,
        table,
        routes,
        dims,
    } = prepare(config, opts.table.as_deref())?;

    let dims_after: Option<LaterDims> = match &opts.dims_after {
        None => None,
        Some(path) => {
            let sql = std::fs::read_to_string(path).map_err(|e| {
                JobError::Input(format!("cannot read --dims-after {}: {e}", path.display()))
            })?;
            let settings = settings.clone();
            let dims_spec = spec.dimensions.clone();
            Some(Box::new(move || {
                let mut db = settings.connect().map_err(|e| e.to_string())?;
                db.execute_script(&sql).map_err(|e| e.to_string())?;
                DimSnapshot::read(&mut db, &dims_spec).map_err(|e| e.to_string())
            }))
        }
    };

    let dead_letter_path = opts
        .dead_letters
        .clone()
        .unwrap_or_else(|| default_dead_letter_path(&opts.input));
    let dead_letters = DeadLetterFile::create(&dead_letter_path).map_err(|e| {
        JobError::Input(format!(
            "cannot create dead-letter file {}: {e}",
            dead_letter_path.display()
        ))
    })?;
    let source_progress = Arc::new(SourceProgress::default());
    let sink_stats = Arc::new(SinkStats::default());
    let pipeline = Pipeline {
        spec,
        routes,
        engine: config.engine.clone(),
        workers: opts.workers.unwrap_or(config.workers),
        input: crate::engine::Input::Bounded(BoundedInput::File(opts.input.clone())),
        dims,
        dims_after,
        sink: if opts.dry_run {
            SinkTarget::Discard
        } else {
            SinkTarget::Database {
                settings,
                table,
                batch_rows: config.sink.batch_rows,
            }
        },
        reconcile: !opts.dry_run,
        dead_letters: Arc::new(dead_letters),
        source_progress: source_progress.clone(),
        sink_stats: sink_stats.clone(),
        dataflow_stats: Default::default(),
        caught_up_workers: Default::default(),
    };
    let progress = opts
        .progress
        .then(|| ProgressDisplay::start(source_progress, sink_stats));
    let result = run_pipeline(pipeline);
    if let Some(progress) = progress {
        progress.finish();
    }
    let summary = result?;
    tracing::info!(file = %dead_letter_path.display(), "dead letters written");
    Ok(summary)
}

/// The summary a user reads after a replay.
pub fn format_summary(summary: &RunSummary) -> String {
    let mut out = String::new();
    let totals = summary.outcomes.totals();
    let _ = writeln!(
        out,
        "processed {} events in {:.2}s on {} worker(s): {:.0} events/s",
        summary.messages,
        summary.elapsed.as_secs_f64(),
        summary.workers,
        summary.events_per_second()
    );
    let _ = writeln!(
        out,
        "\n{:<24} {:>10} {:>10} {:>10} {:>12}",
        "type", "accepted", "skipped", "dead", "total"
    );
    for (label, counts) in &summary.outcomes.by_type {
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>10} {:>12}",
            label,
            counts.accepted,
            counts.skipped_domain + counts.skipped_disabled,
            counts.dead_letter_total(),
            counts.total()
        );
    }
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>10} {:>12}",
        "all",
        totals.accepted,
        totals.skipped_domain + totals.skipped_disabled,
        totals.dead_letter_total(),
        totals.total()
    );
    let _ = writeln!(
        out,
        "\nskipped: {} other domain, {} disabled type",
        totals.skipped_domain, totals.skipped_disabled
    );
    if !totals.dead_letters.is_empty() {
        let _ = writeln!(out, "dead letters by reason:");
        for (reason, n) in &totals.dead_letters {
            let _ = writeln!(out, "  {reason:<22} {n:>10}");
        }
    }
    let _ = writeln!(
        out,
        "\nwide table: {} rows upserted, {} deleted, {} stale rows removed, {} transactions, {} retries",
        summary.rows_upserted,
        summary.rows_deleted,
        summary.rows_reconciled,
        summary.transactions,
        summary.retries
    );
    if summary.dim_rows_changed > 0 {
        let _ = writeln!(
            out,
            "dimension change applied: {} dimension rows changed",
            summary.dim_rows_changed
        );
    }
    out
}
