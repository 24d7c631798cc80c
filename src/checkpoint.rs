//! Durable checkpoints of the running job, so that a restart resumes instead of re-reading the
//! topic's whole history.
//!
//! A checkpoint is taken at a completed epoch `E`: every worker's join state after all times
//! up to `E` (records and lookups) and the next Kafka offset of each of its partitions after
//! the batches it ingested up to `E`. It is written only once the probe has passed `E`, so all
//! rows of those events are in the table. Each worker's part goes to its own files, written
//! under a temporary name and renamed; each process writes its manifest (the same way) when all
//! its workers' parts of `E` are there. A checkpoint is complete when every process's manifest
//! is, and older checkpoints are deleted then. Restore reads the newest complete checkpoint and
//! gives every worker the ids that hash to it, so the worker and process counts may change
//! between runs. In cluster mode the directory must be shared by the processes (one host, or
//! shared storage). Events after `E` are re-read; their upserts are idempotent and their
//! deletes re-derived, so the table converges.
//!
//! File writing happens on the writer thread, never on a timely worker.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::dataflow::join::JoinSnapshot;

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {message}")]
    Io { path: PathBuf, message: String },
}

fn io_error(path: &Path, e: impl ToString) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// One worker's part of a checkpoint.
pub struct Part {
    pub epoch: u64,
    pub worker: usize,
    pub peers: usize,
    /// Next offset to read, per partition of this worker.
    pub offsets: HashMap<i32, i64>,
    /// The worker's [`JoinSnapshot`], postcard-encoded.
    pub state: Arc<Vec<u8>>,
}

/// One process's manifest of a checkpoint: all its workers' parts are written.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    epoch: u64,
    /// Workers of the whole job.
    peers: usize,
    topic: String,
    written_at_ms: u128,
    #[serde(default)]
    process: usize,
    #[serde(default = "one")]
    processes: usize,
}

fn one() -> usize {
    1
}

fn manifest_name(process: usize) -> String {
    format!("MANIFEST-{process}.json")
}

/// The manifests of the checkpoint in `path` when every process's is there: (newest write,
/// a manifest); `None` while it is incomplete. (`MANIFEST.json` is the single-process name
/// of earlier versions.)
fn complete_manifest(path: &Path) -> Result<Option<(u128, Manifest)>, CheckpointError> {
    let mut manifests: Vec<Manifest> = Vec::new();
    let Ok(entries) = std::fs::read_dir(path) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("MANIFEST") && name.ends_with(".json")) {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(|e| io_error(&entry.path(), e))?;
        manifests.push(serde_json::from_slice(&bytes).map_err(|e| io_error(&entry.path(), e))?);
    }
    let Some(first) = manifests.first() else {
        return Ok(None);
    };
    let processes = first.processes;
    let mut seen: Vec<usize> = manifests.iter().map(|m| m.process).collect();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() < processes {
        return Ok(None);
    }
    let newest = manifests.iter().map(|m| m.written_at_ms).max().unwrap_or(0);
    Ok(manifests.into_iter().next().map(|m| (newest, m)))
}

#[derive(Serialize, Deserialize)]
struct PartOffsets {
    offsets: Vec<(i32, i64)>,
}

fn epoch_dir(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("epoch-{epoch:020}"))
}

/// Writes `bytes` to `path` atomically (temporary name, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io_error(&tmp, e))?;
    file.sync_all().map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}

/// The checkpoint writer: a thread that stores parts and completes checkpoints.
pub struct Writer {
    pub parts: Sender<Part>,
    pub thread: std::thread::JoinHandle<Result<(), CheckpointError>>,
}

/// What the writer reports.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// The epoch of the newest complete checkpoint (0: none yet).
    pub last_epoch: AtomicU64,
    /// When it was completed, ms since the Unix epoch.
    pub last_written_ms: AtomicU64,
    pub completed: AtomicU64,
}

impl Writer {
    /// Starts a writer for checkpoints of `topic` in `dir`.
    pub fn start(
        dir: PathBuf,
        topic: String,
        process: usize,
        processes: usize,
        stats: Arc<CheckpointStats>,
    ) -> Result<Writer, CheckpointError> {
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let (parts, receiver) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("wrongbook-checkpoint".into())
            .spawn(move || write_parts(&dir, &topic, (process, processes), receiver, &stats))
            .map_err(|e| CheckpointError::Io {
                path: PathBuf::new(),
                message: e.to_string(),
            })?;
        Ok(Writer { parts, thread })
    }
}

fn write_parts(
    dir: &Path,
    topic: &str,
    (process, processes): (usize, usize),
    parts: Receiver<Part>,
    stats: &CheckpointStats,
) -> Result<(), CheckpointError> {
    let mut arrived: BTreeMap<u64, usize> = BTreeMap::new();
    for part in parts {
        let epoch_path = epoch_dir(dir, part.epoch);
        std::fs::create_dir_all(&epoch_path).map_err(|e| io_error(&epoch_path, e))?;
        write_atomic(
            &epoch_path.join(format!("worker-{}.state", part.worker)),
            &part.state,
        )?;
        let offsets = PartOffsets {
            offsets: part.offsets.into_iter().collect(),
        };
        write_atomic(
            &epoch_path.join(format!("worker-{}.offsets.json", part.worker)),
            &serde_json::to_vec(&offsets).expect("offsets serialize"),
        )?;
        let count = arrived.entry(part.epoch).or_default();
        *count += 1;
        if *count < part.peers / processes {
            continue;
        }
        let written_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let manifest = Manifest {
            epoch: part.epoch,
            peers: part.peers,
            topic: topic.to_owned(),
            written_at_ms,
            process,
            processes,
        };
        write_atomic(
            &epoch_path.join(manifest_name(process)),
            &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )?;
        arrived.retain(|epoch, _| *epoch > part.epoch);
        if complete_manifest(&epoch_path)?.is_none() {
            // Other processes have yet to write theirs: nothing older can go yet.
            continue;
        }
        stats.last_epoch.store(part.epoch, Ordering::Relaxed);
        stats
            .last_written_ms
            .store(written_at_ms as u64, Ordering::Relaxed);
        stats.completed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(epoch = part.epoch, "checkpoint complete");
        // Every other complete checkpoint is older (this one was completed last), and so is
        // every incomplete one of an earlier epoch: none is needed any more.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(epoch) = name
                    .strip_prefix("epoch-")
                    .and_then(|e| e.parse::<u64>().ok())
                else {
                    continue;
                };
                if epoch < part.epoch {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    Ok(())
}

/// A checkpoint read back.
pub struct Restored {
    pub epoch: u64,
    /// The worker count that wrote it.
    pub peers: usize,
    /// Each part's state bytes; every worker decodes them and keeps its ids.
    pub states: Vec<Arc<Vec<u8>>>,
    /// Next offset to read, per partition.
    pub offsets: HashMap<i32, i64>,
}

impl Restored {
    /// The join snapshots of all parts.
    pub fn snapshots(&self) -> Result<Vec<JoinSnapshot>, String> {
        self.states
            .iter()
            .map(|bytes| {
                JoinSnapshot::decode(bytes)
                    .map_err(|e| format!("a checkpoint part does not decode: {e}"))
            })
            .collect()
    }
}

/// The newest complete checkpoint of `topic` in `dir`, if any.
pub fn load_latest(dir: &Path, topic: &str) -> Result<Option<Restored>, CheckpointError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    // The newest complete checkpoint is the one whose last manifest was written last.
    let mut complete: Vec<(u128, Manifest, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("epoch-") {
            continue;
        }
        if let Some((written, manifest)) = complete_manifest(&entry.path())? {
            complete.push((written, manifest, entry.path()));
        }
    }
    complete.sort_by_key(|(written, _, _)| *written);
    let Some((_, manifest, path)) = complete.pop() else {
        return Ok(None);
    };
    let epoch = manifest.epoch;
    let manifest_path = path.join(manifest_name(manifest.process));
    if manifest.topic != topic {
        return Err(io_error(
            &manifest_path,
            format!(
                "it is a checkpoint of topic `{}`, not `{topic}`; use another checkpoint.dir or --from-scratch",
                manifest.topic
            ),
        ));
    }
    let mut states = Vec::with_capacity(manifest.peers);
    let mut offsets = HashMap::new();
    for worker in 0..manifest.peers {
        let state_path = path.join(format!("worker-{worker}.state"));
        states.push(Arc::new(
            std::fs::read(&state_path).map_err(|e| io_error(&state_path, e))?,
        ));
        let offsets_path = path.join(format!("worker-{worker}.offsets.json"));
        let part: PartOffsets = serde_json::from_slice(
            &std::fs::read(&offsets_path).map_err(|e| io_error(&offsets_path, e))?,
        )
        .map_err(|e| io_error(&offsets_path, e))?;
        offsets.extend(part.offsets);
    }
    Ok(Some(Restored {
        epoch,
        peers: manifest.peers,
        states,
        offsets,
    }))
}
