//! `wrongbook replay --input FILE.jsonl`: bounded re-processing of a dump. Reads the routing
//! table and the dimension snapshots from the database, runs the dataflow on N workers, leaves
//! the wide table exactly equal to what the events compute (reconciling whatever it held), and
//! prints a summary of outcomes by type and reason, rows written and events/s.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cluster::Layout;
use crate::commands::job::{prepare, JobError, Prepared};
use crate::commands::progress::run_with_progress;
use crate::config::Config;
use crate::dataflow::route::{RouteTable, Routing};
use crate::engine::{LaterDims, Pipeline, RunSummary};
use crate::sink::dead_letters::DeadLetterFile;
use crate::sink::{SinkTarget, WriteOptions};
use crate::source::dims::DimSnapshot;
use crate::source::file::BoundedInput;
use crate::source::routing::{history_file, replay_history};

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

/// In cluster mode each process writes its own dead letters: `NAME.jsonl` → `NAME.pI.jsonl`.
fn per_process(path: PathBuf, layout: &Layout) -> PathBuf {
    if layout.processes == 1 {
        return path;
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.p{}.{}", layout.process, ext.to_string_lossy()),
        None => format!("{stem}.p{}", layout.process),
    };
    path.with_file_name(name)
}

fn dead_letter_file(path: &Path) -> Result<DeadLetterFile, JobError> {
    DeadLetterFile::create(path).map_err(|e| {
        JobError::Input(format!(
            "cannot create dead-letter file {}: {e}",
            path.display()
        ))
    })
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
        routing_rows,
        dims,
    } = prepare(config, opts.table.as_deref())?;
    let routing = Routing::fixed(RouteTable::build(routing_rows, &spec));
    let layout = cluster_layout(config, opts.workers)?;

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

    let dead_letter_path = per_process(
        opts.dead_letters
            .clone()
            .unwrap_or_else(|| default_dead_letter_path(&opts.input)),
        &layout,
    );
    let dead_letters = dead_letter_file(&dead_letter_path)?;
    let pipeline = Pipeline {
        spec,
        routing,
        engine: config.engine.clone(),
        layout: layout.clone(),
        input: crate::engine::Input::Bounded(BoundedInput::File(opts.input.clone())),
        dims,
        dims_after,
        dim_updates: None,
        dim_stats: Default::default(),
        sink: if opts.dry_run {
            SinkTarget::Discard
        } else {
            SinkTarget::Database {
                settings,
                table,
                options: WriteOptions::of(&config.sink),
            }
        },
        reconcile: !opts.dry_run,
        dead_letters: Arc::new(dead_letters),
        source_progress: Default::default(),
        sink_stats: Default::default(),
        dataflow_stats: Default::default(),
        caught_up_workers: Default::default(),
    };
    let summary = run_with_progress(pipeline, opts.progress)?;
    tracing::info!(file = %dead_letter_path.display(), "dead letters written");
    Ok(summary)
}

/// The configuration's cluster layout with `workers` (the configuration's when `None`).
pub fn cluster_layout(config: &Config, workers: Option<usize>) -> Result<Layout, JobError> {
    Layout::from_config(config, workers.unwrap_or(config.workers))
        .map_err(|e| JobError::Input(e.to_string()))
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

/// A point in a topic: its start, its end now, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimePoint {
    Earliest,
    Latest,
    /// Milliseconds since the Unix epoch (message timestamps).
    At(i64),
}

impl TimePoint {
    /// `earliest`, `latest`, milliseconds since the epoch, or `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
    pub fn parse(text: &str) -> Result<TimePoint, String> {
        match text {
            "earliest" => return Ok(TimePoint::Earliest),
            "latest" => return Ok(TimePoint::Latest),
            _ => {}
        }
        if let Ok(ms) = text.parse::<i64>() {
            return Ok(TimePoint::At(ms));
        }
        parse_utc(text).map(TimePoint::At).ok_or_else(|| {
            format!("`{text}` is not earliest, latest, ms since the epoch or YYYY-MM-DDTHH:MM:SSZ")
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm]Z` as ms since the epoch.
fn parse_utc(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let (time, millis) = match time.split_once('.') {
        Some((t, ms)) => (t, format!("{ms:0<3}").get(..3)?.parse::<i64>().ok()?),
        None => (time, 0),
    };
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3_600 + min * 60 + s) * 1_000) + millis)
}

/// A replay of a topic between two points.
#[derive(Debug, Clone)]
pub struct TopicReplayOptions {
    pub from: TimePoint,
    pub to: TimePoint,
    pub workers: Option<usize>,
    pub table: Option<String>,
    pub dead_letters: PathBuf,
    pub progress: bool,
}

/// Re-processes the topic between `from` and `to`: the table ends as the events up to `to`
/// compute; events before `from` only rebuild state, and only rows of records that events in
/// the range touch are written (all rows, reconciled, with `--from earliest`). It reads with a
/// consumer group of its own and commits nothing, so the live job's offsets never move.
pub fn replay_topic(config: &Config, opts: &TopicReplayOptions) -> Result<RunSummary, JobError> {
    use crate::source::kafka::{consumer, partitions, StartAt};
    use rdkafka::consumer::Consumer;
    use std::collections::HashMap;

    let Prepared {
        spec,
        settings,
        table,
        routing_rows,
        dims,
    } = prepare(config, opts.table.as_deref())?;
    let layout = cluster_layout(config, opts.workers)?;
    let routing = Routing::new(
        replay_history(
            &history_file(&config.resolve(&config.checkpoint.dir), 0, 1),
            routing_rows,
            &spec,
        )
        .map_err(JobError::Input)?,
    );
    let kafka = &config.kafka;
    let group_id = format!("{}-replay-{}", kafka.group_id, std::process::id());
    let fail = |e: String| JobError::Input(e);
    let probe = consumer(kafka, &group_id).map_err(|e| fail(e.to_string()))?;
    let parts = partitions(&probe, kafka, &kafka.topic).map_err(|e| fail(e.to_string()))?;
    let offsets_at = |point: TimePoint| -> Result<HashMap<i32, i64>, JobError> {
        let mut result = HashMap::new();
        match point {
            TimePoint::Earliest => result.extend(parts.iter().map(|(p, low, _)| (*p, *low))),
            TimePoint::Latest => result.extend(parts.iter().map(|(p, _, high)| (*p, *high))),
            TimePoint::At(ms) => {
                let mut tpl = rdkafka::TopicPartitionList::new();
                for (p, _, _) in &parts {
                    tpl.add_partition_offset(&kafka.topic, *p, rdkafka::Offset::Offset(ms))
                        .map_err(|e| fail(e.to_string()))?;
                }
                let found = probe
                    .offsets_for_times(tpl, std::time::Duration::from_secs(30))
                    .map_err(|e| {
                        fail(format!("offsets for time {ms} in `{}`: {e}", kafka.topic))
                    })?;
                for element in found.elements() {
                    let high = parts
                        .iter()
                        .find(|(p, _, _)| *p == element.partition())
                        .map_or(0, |(_, _, h)| *h);
                    let offset = match element.offset() {
                        rdkafka::Offset::Offset(o) => o,
                        _ => high,
                    };
                    result.insert(element.partition(), offset);
                }
            }
        }
        Ok(result)
    };
    let from = offsets_at(opts.from)?;
    let to = offsets_at(opts.to)?;
    let in_range: i64 = parts
        .iter()
        .map(|(p, _, _)| {
            (to.get(p).copied().unwrap_or(0) - from.get(p).copied().unwrap_or(0)).max(0)
        })
        .sum();
    tracing::info!(topic = %kafka.topic, events_in_range = in_range, ?from, ?to, "replaying a range of the topic");
    drop(probe);

    let dead_letters = dead_letter_file(&per_process(opts.dead_letters.clone(), &layout))?;
    let whole = opts.from == TimePoint::Earliest;
    let pipeline = Pipeline {
        spec,
        routing,
        engine: config.engine.clone(),
        layout: layout.clone(),
        input: crate::engine::Input::Kafka(Box::new(crate::engine::KafkaInput {
            kafka: kafka.clone(),
            group_id,
            start: StartAt::Earliest,
            bounded: true,
            commit: false,
            stop: Default::default(),
            checkpoint: None,
            restored: None,
            end_offsets: Some(to),
            write_from: (!whole).then_some(from),
        })),
        dims,
        dims_after: None,
        dim_updates: None,
        dim_stats: Default::default(),
        sink: SinkTarget::Database {
            settings,
            table,
            options: WriteOptions::of(&config.sink),
        },
        reconcile: whole,
        dead_letters: Arc::new(dead_letters),
        source_progress: Default::default(),
        sink_stats: Default::default(),
        dataflow_stats: Default::default(),
        caught_up_workers: Default::default(),
    };
    Ok(run_with_progress(pipeline, opts.progress)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_points_parse() {
        assert_eq!(TimePoint::parse("earliest"), Ok(TimePoint::Earliest));
        assert_eq!(TimePoint::parse("latest"), Ok(TimePoint::Latest));
        assert_eq!(
            TimePoint::parse("1700000000000"),
            Ok(TimePoint::At(1_700_000_000_000))
        );
        assert_eq!(
            TimePoint::parse("2023-11-14T22:13:20Z"),
            Ok(TimePoint::At(1_700_000_000_000))
        );
        assert_eq!(
            TimePoint::parse("2000-02-29T00:00:00.5Z"),
            Ok(TimePoint::At(951_782_400_500))
        );
        assert!(TimePoint::parse("yesterday").is_err());
        assert!(TimePoint::parse("2023-13-01T00:00:00Z").is_err());
    }
}
