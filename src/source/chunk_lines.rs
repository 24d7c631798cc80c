//! The chunks of a mapped file and the line numbers of their messages.
//!
//! The reader cuts a mapped file into chunks at line ends without reading their lines: it only
//! looks for the first line end past each chunk's size. A chunk is split into lines
//! ([`FileChunk::split`]) by the reader while it has the time, else by the worker that takes
//! it, and the split records how many line ends the chunk held. A message's line number is
//! then the line ends in every chunk before its own plus its line within its chunk. Only dead
//! letters need it, so it is worked out when asked ([`ChunkLines::lines_before`]); an earlier
//! chunk that no worker has split yet (it is still on its way) is counted then. In a cluster,
//! the chunks of other processes' workers are counted by the reader as it cuts them.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::file::{message_end, SourceProgress};
use super::mapped::{MappedChunk, MappedFile};
use super::newlines::for_each_newline;
use super::{ChunkBytes, LineBase, Positions, SourceBatch};

/// Line ends of a chunk not counted yet.
const UNCOUNTED: u64 = u64::MAX;

/// A mapped file's chunks: where each ends, and how many line ends each holds once counted.
pub struct ChunkLines {
    file: Arc<MappedFile>,
    /// The file's name, for positions.
    name: Arc<str>,
    /// Messages a chunk is cut to hold, about: room for them is taken at once when it is split.
    chunk_messages: usize,
    /// Where chunk `k` ends in the file; set by the reader as it cuts the chunk.
    ends: Box<[AtomicUsize]>,
    /// The line ends (`\n`) in chunk `k`, once counted, or [`UNCOUNTED`].
    newlines: Box<[AtomicU64]>,
    /// Lines before chunk `k`, for the chunks worked out so far (`[0]` to start).
    before: Mutex<Vec<u64>>,
    /// Where split chunks count their messages.
    progress: Arc<SourceProgress>,
}

impl std::fmt::Debug for ChunkLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkLines")
            .field("name", &self.name)
            .field("chunks", &self.ends.len())
            .finish_non_exhaustive()
    }
}

impl ChunkLines {
    /// The chunks of `file` (named `name`), none cut yet. No chunk but the last is shorter than
    /// `chunk_bytes`, which bounds how many there can be.
    pub fn new(
        file: Arc<MappedFile>,
        name: Arc<str>,
        chunk_bytes: usize,
        chunk_messages: usize,
        progress: Arc<SourceProgress>,
    ) -> ChunkLines {
        let chunks = file.bytes().len() / chunk_bytes.max(1) + 1;
        ChunkLines {
            file,
            name,
            chunk_messages,
            ends: (0..chunks).map(|_| AtomicUsize::new(0)).collect(),
            newlines: (0..chunks).map(|_| AtomicU64::new(UNCOUNTED)).collect(),
            before: Mutex::new(vec![0]),
            progress,
        }
    }

    /// Cuts chunk `index`, which ends at `end` of the file (after a line end, or at the file's
    /// end); the chunks before it are cut.
    pub fn cut(&self, index: usize, end: usize) {
        self.ends[index].store(end, Ordering::Release);
    }

    /// The bytes of chunk `index`, which is cut.
    fn range(&self, index: usize) -> Range<usize> {
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1].load(Ordering::Acquire),
        };
        start..self.ends[index].load(Ordering::Acquire)
    }

    /// Counts the line ends of chunk `index`, which is cut, and keeps the count.
    pub fn count(&self, index: usize) -> u64 {
        let bytes = &self.file.bytes()[self.range(index)];
        let newlines = memchr::memchr_iter(b'\n', bytes).count() as u64;
        self.newlines[index].store(newlines, Ordering::Release);
        newlines
    }

    /// The lines in the chunks before chunk `index`, which is cut.
    pub fn lines_before(&self, index: usize) -> u64 {
        let mut before = self.before.lock().expect("chunk lines lock");
        while before.len() <= index {
            let chunk = before.len() - 1;
            let newlines = match self.newlines[chunk].load(Ordering::Acquire) {
                UNCOUNTED => self.count(chunk),
                newlines => newlines,
            };
            let next = before[chunk] + newlines;
            before.push(next);
        }
        before[index]
    }
}

/// Chunk `index` of a mapped file, cut at line ends but not yet split into lines. It holds its
/// bytes of the mapping until it is dropped.
#[derive(Debug)]
pub struct FileChunk {
    epoch: u64,
    index: usize,
    bytes: MappedChunk,
    lines: Arc<ChunkLines>,
}

impl FileChunk {
    /// Chunk `index` of `lines`, which is cut, at epoch `epoch`.
    pub fn new(lines: Arc<ChunkLines>, index: usize, epoch: u64) -> FileChunk {
        FileChunk {
            epoch,
            index,
            bytes: MappedChunk::new(lines.file.clone(), lines.range(index)),
            lines,
        }
    }

    /// Splits the chunk into its messages, where [`super::file`] would read them: a `\r` before
    /// a line's `\n` is not part of it, blank lines are not messages. Records the chunk's line
    /// ends for the line numbers of later chunks, and counts its messages as read.
    pub fn split(self) -> SourceBatch {
        let FileChunk {
            epoch,
            index,
            bytes,
            lines,
        } = self;
        let data = bytes.bytes();
        let room = lines.chunk_messages + lines.chunk_messages / 8;
        let mut spans = Vec::with_capacity(room);
        let mut numbers = Vec::with_capacity(room);
        let mut number = 0u64;
        let mut start = 0usize;
        let mut add = |start: usize, end: usize, number: u64| {
            if let Some(end) = message_end(data, start, end) {
                spans.push(start..end);
                numbers.push(number);
            }
        };
        for_each_newline(data, |end| {
            number += 1;
            add(start, end, number);
            start = end + 1;
        });
        lines.newlines[index].store(number, Ordering::Release);
        // Only the file's last chunk can end without a line end.
        if start < data.len() {
            add(start, data.len(), number + 1);
        }
        lines
            .progress
            .messages
            .fetch_add(spans.len() as u64, Ordering::Relaxed);
        SourceBatch {
            epoch,
            data: ChunkBytes::Mapped(bytes),
            spans,
            positions: Positions::Lines {
                file: lines.name.clone(),
                base: LineBase::Chunk(lines, index),
                lines: numbers,
            },
        }
    }
}
