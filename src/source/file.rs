//! The bounded sources: a JSONL file (one message per line) or messages in memory, cut into
//! chunks that this process's workers take from one queue, each chunk stamped with an epoch.
//!
//! Epochs are assigned here, not by the workers: chunk `k` is at epoch
//! `k / (workers × chunks_per_epoch)`, so all workers move through the same epochs and the end
//! of input is one epoch that everyone reaches. In a cluster, every process cuts the file the
//! same way and keeps chunk `k` when worker `k mod workers` is one of its own.
//!
//! A regular file is mapped and cut into chunks of about `chunk_messages` lines by their bytes,
//! split into lines here while the workers have chunks waiting and by the workers otherwise
//! ([`super::chunk_lines`]). Other inputs are split into lines here, `chunk_messages` to a
//! chunk.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::chunk_lines::{ChunkLines, FileChunk};
use super::mapped::MappedFile;
use super::{ChunkBytes, Closed, LineBase, Positions, SourceBatch, SourceEvent, WorkerQueue};

/// How far a source has read, for progress displays.
#[derive(Debug, Default)]
pub struct SourceProgress {
    pub bytes: AtomicU64,
    pub messages: AtomicU64,
    /// The input's size in bytes, when known.
    pub total_bytes: AtomicU64,
    /// Kafka partitions: where each is read to and its high watermark, refreshed every second.
    pub partitions: std::sync::Mutex<std::collections::BTreeMap<i32, PartitionProgress>>,
}

/// How far one Kafka partition is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartitionProgress {
    /// The next offset to read (the first not read yet).
    pub next_offset: i64,
    /// The offset after the partition's last message, as last fetched.
    pub high_watermark: i64,
}

impl PartitionProgress {
    /// Messages in the partition not read yet.
    pub fn lag(&self) -> i64 {
        (self.high_watermark - self.next_offset).max(0)
    }
}

/// A bounded input.
#[derive(Debug, Clone)]
pub enum BoundedInput {
    /// A JSONL file.
    File(PathBuf),
    /// Messages in memory.
    Messages(Arc<Vec<Vec<u8>>>),
}

/// Deals chunks of messages to the workers of this process.
pub struct Dealer {
    /// The queue this process's workers take their chunks from.
    queue: WorkerQueue,
    /// The global index of this process's first worker.
    first_worker: usize,
    peers: usize,
    chunk_messages: usize,
    chunks_per_epoch: u64,
    chunk_index: u64,
    /// Messages read so far, dealt to any process.
    read: u64,
    chunk: SourceBatch,
    make_positions: Box<dyn Fn() -> Positions + Send>,
    /// The reader splits a mapped file's chunk into lines itself when at least this many
    /// chunks per worker are waiting: while it keeps ahead of the workers, its time is spare.
    /// When the queue runs lower the chunk goes unsplit and its worker splits it, so the one
    /// reader never holds back many workers.
    split_when_waiting: usize,
    pub progress: Arc<SourceProgress>,
}

impl Dealer {
    pub fn new(
        queue: WorkerQueue,
        first_worker: usize,
        peers: usize,
        chunk_messages: usize,
        epoch_max_messages: usize,
        make_positions: Box<dyn Fn() -> Positions + Send>,
        progress: Arc<SourceProgress>,
    ) -> Dealer {
        let chunk = SourceBatch::new(0, make_positions());
        Dealer {
            queue,
            first_worker,
            peers,
            chunk_messages,
            chunks_per_epoch: (epoch_max_messages / chunk_messages).max(1) as u64,
            chunk_index: 0,
            read: 0,
            chunk,
            make_positions,
            split_when_waiting: 2,
            progress,
        }
    }

    fn epoch_of(&self, chunk_index: u64) -> u64 {
        chunk_index / (self.peers as u64 * self.chunks_per_epoch)
    }

    /// Adds a copy of a message; `line` is its line number for file sources.
    pub fn push(&mut self, message: &[u8], line: u64) -> Result<(), Closed> {
        self.chunk.push(message);
        let end = self.chunk.data.len();
        self.pushed(line, end)?;
        Ok(())
    }

    /// Adds the message at `span` of the chunk's bytes (a reader read it there in place), line
    /// number `line`. When that fills the chunk it is dealt, and the bytes from `carry_from` on
    /// (read past the message) start the next chunk: then the result is `carry_from`, how far
    /// the bytes moved back.
    fn push_span(
        &mut self,
        span: std::ops::Range<usize>,
        line: u64,
        carry_from: usize,
    ) -> Result<usize, Closed> {
        self.chunk.spans.push(span);
        self.pushed(line, carry_from)
    }

    /// Counts the message just added; deals the chunk when it is full (see
    /// [`Dealer::push_span`] for `carry_from`).
    fn pushed(&mut self, line: u64, carry_from: usize) -> Result<usize, Closed> {
        if let Positions::Lines { lines, .. } = &mut self.chunk.positions {
            lines.push(line);
        }
        self.read += 1;
        if self.chunk.len() < self.chunk_messages {
            return Ok(0);
        }
        self.deal(carry_from)?;
        Ok(carry_from)
    }

    /// Takes the next turn: the epoch of the next chunk, and whether one of this process's
    /// workers ingests it. Chunk k belongs to the process of worker k mod peers (every process
    /// reads the whole input and keeps its own chunks); within the process, whichever of its
    /// workers is free first takes it.
    fn next_turn(&mut self) -> (u64, bool) {
        let worker = (self.chunk_index % self.peers as u64) as usize;
        let epoch = self.epoch_of(self.chunk_index);
        self.chunk_index += 1;
        let ours = worker
            .checked_sub(self.first_worker)
            .is_some_and(|local| local < self.queue.workers());
        (epoch, ours)
    }

    /// Sends a chunk into the workers' queue, or, when it is full, once it has drained to half
    /// (see [`WorkerQueue::send_when_room`]). Whichever worker is free takes it: one whose
    /// share of the keyed work runs slower, or whose core the reader shares, takes fewer
    /// chunks, and none waits for input while another has chunks waiting. `make` turns the
    /// chunk into the event, given how many chunks per worker wait before it.
    fn send(&mut self, make: impl FnOnce(usize) -> SourceEvent) -> Result<(), Closed> {
        let queue = &self.queue;
        match queue.is_full() {
            // The reader is the queue's one sender: the room stays.
            false => queue.send(make(queue.len() / queue.workers())),
            true => queue.send_when_room(make(usize::MAX)),
        }
    }

    /// Sends the chunk to its worker; its bytes from `carry_from` on start the next chunk.
    fn deal(&mut self, carry_from: usize) -> Result<(), Closed> {
        let mut next = SourceBatch::new(0, (self.make_positions)());
        if let ChunkBytes::Owned(data) = &mut self.chunk.data {
            // Sized like the chunk it follows, and a quarter more: filling it should not grow
            // it (a chunk a little larger than the last would copy all of it once more).
            let carried = &data[carry_from.min(data.len())..];
            let bytes = data.len() - carried.len();
            let next_data = next.data.owned();
            next_data.reserve(bytes + bytes / 4 + carried.len());
            next_data.extend_from_slice(carried);
            data.truncate(bytes);
        }
        next.spans.reserve(self.chunk_messages);
        match &mut next.positions {
            Positions::Indexed { first } => *first = self.read,
            Positions::Lines { lines, .. } => lines.reserve(self.chunk_messages),
            Positions::Kafka { .. } => {}
        }
        let mut chunk = std::mem::replace(&mut self.chunk, next);
        let (epoch, ours) = self.next_turn();
        chunk.epoch = epoch;
        if ours {
            // Counted by the process whose worker ingests it.
            self.progress
                .messages
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            self.send(|_| SourceEvent::Batch(chunk))?;
        }
        Ok(())
    }

    /// Deals chunk `index` of a mapped file, which is cut: to its worker when that is one of
    /// this process's, split here or there (see [`Dealer::split_when_waiting`]). The
    /// chunks of other processes' workers have their line ends counted here, for the line
    /// numbers of the chunks after them.
    fn deal_file_chunk(&mut self, lines: &Arc<ChunkLines>, index: usize) -> Result<(), Closed> {
        let (epoch, ours) = self.next_turn();
        if !ours {
            lines.count(index);
            return Ok(());
        }
        let chunk = FileChunk::new(lines.clone(), index, epoch);
        let split_when_waiting = self.split_when_waiting;
        self.send(|waiting| match waiting >= split_when_waiting {
            true => SourceEvent::Batch(chunk.split()),
            false => SourceEvent::FileChunk(chunk),
        })
    }

    /// Deals the last chunk and tells every worker where input ends.
    pub fn finish(mut self) -> Result<(), Closed> {
        if !self.chunk.is_empty() {
            let end = self.chunk.data.len();
            self.deal(end)?;
        }
        let final_epoch = if self.chunk_index == 0 {
            0
        } else {
            self.epoch_of(self.chunk_index - 1) + 1
        };
        self.queue.send_to_each(|| SourceEvent::End { final_epoch })
    }

    /// Tells every worker the source failed.
    pub fn fail(self, message: String) {
        let _ = self
            .queue
            .send_to_each(|| SourceEvent::Failed(message.clone()));
    }
}

/// Reads `input` to the end and deals it; runs on its own thread.
pub fn read_bounded(input: &BoundedInput, mut dealer: Dealer) {
    match input {
        BoundedInput::Messages(messages) => {
            for message in messages.iter() {
                dealer
                    .progress
                    .bytes
                    .fetch_add(message.len() as u64, Ordering::Relaxed);
                if dealer.push(message, 0).is_err() {
                    return;
                }
            }
            let _ = dealer.finish();
        }
        BoundedInput::File(path) => match read_lines(path, &mut dealer) {
            Ok(()) => {
                let _ = dealer.finish();
            }
            Err(ReadError::Io(message)) => dealer.fail(message),
            Err(ReadError::Closed) => {}
        },
    }
}

enum ReadError {
    Io(String),
    Closed,
}

/// Reads the file at `path` through a memory map when it can be mapped (a regular file), and
/// with reads into the chunks otherwise (pipes, special files).
fn read_lines(path: &Path, dealer: &mut Dealer) -> Result<(), ReadError> {
    let io = |e: std::io::Error| ReadError::Io(format!("reading {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(io)?;
    match MappedFile::map(&file, path).map_err(io)? {
        Some(mapped) => {
            let chunk_bytes = chunk_bytes_for(mapped.bytes(), dealer.chunk_messages);
            let name = Arc::from(path.display().to_string());
            cut_mapped(Arc::new(mapped), name, chunk_bytes, dealer).map_err(|_| ReadError::Closed)
        }
        None => read_lines_in_place(file, path, dealer, 1 << 20),
    }
}

/// Cuts a mapped file into chunks that point into the mapping: the workers parse the page
/// cache's own bytes, and nothing is copied. A chunk ends at the first line end past
/// `chunk_bytes`, so cutting reads little more than a line per chunk; splitting a chunk into
/// lines, here or in a worker, finds the same lines as [`read_lines_in_place`]. A replay reads
/// the file as long as it was when mapped.
fn cut_mapped(
    file: Arc<MappedFile>,
    name: Arc<str>,
    chunk_bytes: usize,
    dealer: &mut Dealer,
) -> Result<(), Closed> {
    let bytes = file.bytes();
    let progress = dealer.progress.clone();
    progress
        .total_bytes
        .store(bytes.len() as u64, Ordering::Relaxed);
    let lines = Arc::new(ChunkLines::new(
        file.clone(),
        name,
        chunk_bytes,
        dealer.chunk_messages,
        progress.clone(),
    ));
    let chunk_bytes = chunk_bytes.max(1);
    let mut start = 0usize;
    let mut index = 0usize;
    while start < bytes.len() {
        let past = (start + chunk_bytes - 1).min(bytes.len());
        let end = memchr::memchr(b'\n', &bytes[past..]).map_or(bytes.len(), |at| past + at + 1);
        lines.cut(index, end);
        dealer.deal_file_chunk(&lines, index)?;
        // After the chunk holds its bytes: the windows it lies in stay mapped.
        file.reader_at(end);
        progress.bytes.store(end as u64, Ordering::Relaxed);
        start = end;
        index += 1;
    }
    Ok(())
}

/// The bytes of a mapped file's chunk: about `chunk_messages` lines, by the mean length of the
/// lines in its first MiB, and between a page and 64 MiB.
fn chunk_bytes_for(bytes: &[u8], chunk_messages: usize) -> usize {
    let sample = &bytes[..bytes.len().min(1 << 20)];
    let lines = memchr::memchr_iter(b'\n', sample).count().max(1);
    (sample.len() / lines)
        .saturating_mul(chunk_messages)
        .clamp(4096, 64 << 20)
}

/// Reads `file` (opened from `path`) into the chunks themselves, at most `read_bytes` at a
/// time: each read lands in the chunk being filled and its lines are cut where they lie, so a
/// byte is copied once, by the kernel. Only what was read past a full chunk's last line moves
/// on to the next chunk; reads are sized by the mean line so far to what the chunk still
/// lacks, so that is little.
/// A `\r` before a line's `\n` is not part of it; blank lines are not messages.
fn read_lines_in_place(
    mut file: std::fs::File,
    path: &Path,
    dealer: &mut Dealer,
    read_bytes: usize,
) -> Result<(), ReadError> {
    let io = |e: std::io::Error| ReadError::Io(format!("reading {}: {e}", path.display()));
    if let Ok(meta) = file.metadata() {
        dealer
            .progress
            .total_bytes
            .store(meta.len(), Ordering::Relaxed);
    }
    let closed = |_| ReadError::Closed;
    // Lines cut so far (the last one's number), and their bytes, for the mean line.
    let mut number = 0u64;
    let mut bytes_cut = 0u64;
    // In the chunk's bytes: where its next line starts, and how far that line is known to
    // have no `\n`.
    let mut line_start = 0usize;
    let mut scanned = 0usize;
    loop {
        let mean_line = bytes_cut.checked_div(number).unwrap_or(512).max(1) as usize;
        let lacking = dealer.chunk_messages.saturating_sub(dealer.chunk.len());
        let wanted = (lacking * mean_line + mean_line / 2).clamp(1, read_bytes);
        let data = dealer.chunk.data.owned();
        data.reserve(wanted);
        let read = (&mut file)
            .take(wanted as u64)
            .read_to_end(data)
            .map_err(io)?;
        dealer
            .progress
            .bytes
            .fetch_add(read as u64, Ordering::Relaxed);
        if read == 0 {
            let end = dealer.chunk.data.len();
            if line_start < end {
                number += 1;
                push_line(dealer, line_start, end, end, number).map_err(closed)?;
            }
            return Ok(());
        }
        while let Some(at) = memchr::memchr(b'\n', &dealer.chunk.data.bytes()[scanned..]) {
            let end = scanned + at;
            number += 1;
            bytes_cut += (end + 1 - line_start) as u64;
            let next = end + 1;
            let moved = push_line(dealer, line_start, end, next, number).map_err(closed)?;
            line_start = next - moved;
            scanned = line_start;
        }
        scanned = dealer.chunk.data.len();
    }
}

/// Adds line `number`, `data[start..end]` of the chunk being filled (without its `\n`; a
/// `\r` before that is dropped), unless it is blank. The next line starts at `next`; returns
/// how far the chunk's bytes from there moved back (see [`Dealer::push_span`]).
fn push_line(
    dealer: &mut Dealer,
    start: usize,
    end: usize,
    next: usize,
    number: u64,
) -> Result<usize, Closed> {
    match message_end(dealer.chunk.data.bytes(), start, end) {
        Some(end) => dealer.push_span(start..end, number, next),
        None => Ok(0),
    }
}

/// Where the message of line `bytes[start..end]` (without its `\n`) ends: a `\r` before the
/// `\n` is not part of it. `None` when the line is blank: blank lines are not messages.
pub(super) fn message_end(bytes: &[u8], start: usize, end: usize) -> Option<usize> {
    let end = match bytes[start..end] {
        [.., b'\r'] => end - 1,
        _ => end,
    };
    (start < end).then_some(end)
}

/// The positions of a new chunk of `input`.
pub fn positions_for(input: &BoundedInput) -> Box<dyn Fn() -> Positions + Send> {
    match input {
        BoundedInput::File(path) => {
            let file: Arc<str> = Arc::from(path.display().to_string());
            Box::new(move || Positions::Lines {
                file: file.clone(),
                base: LineBase::Start,
                lines: Vec::new(),
            })
        }
        BoundedInput::Messages(_) => Box::new(|| Positions::Indexed { first: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::source::{shared_queue, unbounded_queue, SourcePosition};

    /// Chunks go into the one queue in order, every worker's share of an epoch together, and
    /// each worker gets its own end.
    #[test]
    fn chunks_are_queued_in_order_with_shared_epochs() {
        let (queue, receiver) = unbounded_queue(2);
        let messages: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
        let dealer = Dealer::new(
            queue,
            0,
            2,
            2,
            4,
            positions_for(&BoundedInput::Messages(Arc::new(Vec::new()))),
            Arc::new(SourceProgress::default()),
        );
        read_bounded(&BoundedInput::Messages(Arc::new(messages)), dealer);
        let mut seen = Vec::new();
        let mut ends = 0;
        for event in receiver.try_iter() {
            match event {
                SourceEvent::Batch(batch) => {
                    assert_eq!(ends, 0, "a chunk after an end");
                    for (i, message) in batch.messages() {
                        let SourcePosition::Index(index) = batch.position(i) else {
                            panic!("in-memory messages have indexes");
                        };
                        assert_eq!(message.bytes(), format!("m{index}").as_bytes());
                        seen.push((batch.epoch, index));
                    }
                }
                SourceEvent::End { final_epoch } => {
                    assert_eq!(final_epoch, 2);
                    ends += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ends, 2, "one end for each worker");
        // Chunks of 2, two chunks per worker per epoch: four chunks to an epoch.
        let expected: Vec<(u64, u64)> = (0..10).map(|i| (i / 8, i)).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_worker_that_takes_no_input_holds_back_no_other() {
        let (queue, inboxes) = shared_queue(2, 2);
        let [stalled, taking] = inboxes.try_into().ok().expect("two inboxes");
        let (stalled, taking) = (stalled.open(), taking.open());
        let messages: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i}").into_bytes()).collect();
        let dealer = Dealer::new(
            queue,
            0,
            2,
            1,
            4,
            positions_for(&BoundedInput::Messages(Arc::new(Vec::new()))),
            Arc::new(SourceProgress::default()),
        );
        let reader = std::thread::spawn(move || {
            read_bounded(&BoundedInput::Messages(Arc::new(messages)), dealer)
        });
        // Every chunk reaches the worker that takes its input, none waits for the stalled
        // one (dealt in turn, half of them would), and each gets its end.
        let mut taken = 0;
        loop {
            match taking
                .recv_timeout(Duration::from_secs(10))
                .expect("the reader keeps dealing to the worker that takes its input")
            {
                SourceEvent::Batch(batch) => taken += batch.len(),
                SourceEvent::End { final_epoch } => {
                    assert_eq!(final_epoch, 3);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(taken, 20);
        let end = stalled.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(end, SourceEvent::End { final_epoch: 3 }),
            "{end:?}"
        );
        reader.join().unwrap();
    }

    /// Reads `text` as a file with `read` into chunks of `chunk_messages`, and gives back its
    /// messages with their line numbers and the sizes of the chunks dealt.
    fn read_file_with(
        text: &str,
        chunk_messages: usize,
        read: impl FnOnce(&Path, &mut Dealer) -> Result<(), ReadError>,
    ) -> (Vec<(u64, String)>, Vec<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).unwrap();
        let (sender, receiver) = unbounded_queue(1);
        let progress = Arc::new(SourceProgress::default());
        let mut dealer = Dealer::new(
            sender,
            0,
            1,
            chunk_messages,
            100,
            positions_for(&BoundedInput::File(path.clone())),
            progress.clone(),
        );
        assert!(read(&path, &mut dealer).is_ok());
        dealer.finish().unwrap();
        assert_eq!(progress.bytes.load(Ordering::Relaxed), text.len() as u64);
        lines_dealt(&receiver)
    }

    /// The messages dealt to `receiver` with their line numbers, and the sizes of the chunks.
    fn lines_dealt(
        receiver: &crossbeam_channel::Receiver<SourceEvent>,
    ) -> (Vec<(u64, String)>, Vec<usize>) {
        let mut lines = Vec::new();
        let mut chunk_sizes = Vec::new();
        for event in receiver.try_iter() {
            let batch = match event {
                SourceEvent::Batch(batch) => batch,
                SourceEvent::FileChunk(chunk) => chunk.split(),
                _ => continue,
            };
            chunk_sizes.push(batch.len());
            lines.extend(lines_of(&batch));
        }
        (lines, chunk_sizes)
    }

    /// The messages of a file's batch with their line numbers.
    fn lines_of(batch: &SourceBatch) -> Vec<(u64, String)> {
        batch
            .messages()
            .map(|(i, message)| {
                let SourcePosition::Line { line, .. } = batch.position(i) else {
                    panic!("file messages have line numbers");
                };
                (line, String::from_utf8(message.bytes().to_vec()).unwrap())
            })
            .collect()
    }

    // Blank lines, CRLF, a long line, and no newline at the end.
    const AWKWARD_LINES: &str =
        "first\n\nsecond line\r\n\r\nthe third line is longer than the buffer\nlast";

    fn awkward_lines_expected() -> Vec<(u64, String)> {
        vec![
            (1, "first".to_string()),
            (3, "second line".to_string()),
            (5, "the third line is longer than the buffer".to_string()),
            (6, "last".to_string()),
        ]
    }

    fn assert_full_chunks(chunk_sizes: &[usize], chunk_messages: usize, case: &str) {
        let (last, full) = chunk_sizes.split_last().expect("a chunk");
        assert!(full.iter().all(|&n| n == chunk_messages), "{case}");
        assert!((1..=chunk_messages).contains(last), "{case}");
    }

    #[test]
    fn lines_split_across_reads_and_chunks_are_read_whole_with_their_numbers() {
        for (read_bytes, chunk_messages) in [1, 3, 7, 64, 1 << 20]
            .into_iter()
            .flat_map(|r| [1, 2, 100].map(|c| (r, c)))
        {
            let (lines, chunk_sizes) =
                read_file_with(AWKWARD_LINES, chunk_messages, |path, dealer| {
                    read_lines_in_place(
                        std::fs::File::open(path).unwrap(),
                        path,
                        dealer,
                        read_bytes,
                    )
                });
            let case = format!("reads of {read_bytes} bytes, chunks of {chunk_messages}");
            assert_eq!(lines, awkward_lines_expected(), "{case}");
            assert_full_chunks(&chunk_sizes, chunk_messages, &case);
        }
    }

    /// Cuts `text`, mapped, into chunks of at least `chunk_bytes` for `peers` workers of which
    /// this process runs `ours` (from the first), and gives back the messages with their line
    /// numbers: from the batches the workers split, in the order given by `order` (which
    /// reorders the chunks dealt), and the bytes of each chunk.
    fn cut_mapped_with(
        text: &str,
        chunk_bytes: usize,
        peers: usize,
        ours: usize,
        split_when_waiting: usize,
        order: impl FnOnce(&mut Vec<FileChunk>),
    ) -> (Vec<(u64, String)>, Vec<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, text).unwrap();
        let (queue, receiver) = unbounded_queue(ours);
        let progress = Arc::new(SourceProgress::default());
        let mut dealer = Dealer::new(
            queue,
            peers - ours,
            peers,
            1,
            100,
            positions_for(&BoundedInput::File(path.clone())),
            progress.clone(),
        );
        dealer.split_when_waiting = split_when_waiting;
        let file = std::fs::File::open(&path).unwrap();
        let mapped = Arc::new(MappedFile::map(&file, &path).unwrap().expect("mapped"));
        let name = Arc::from(path.display().to_string());
        cut_mapped(mapped, name, chunk_bytes, &mut dealer).unwrap();
        dealer.finish().unwrap();
        assert_eq!(progress.bytes.load(Ordering::Relaxed), text.len() as u64);
        let (mut chunks, mut split) = (Vec::new(), Vec::new());
        for event in receiver.try_iter() {
            match event {
                SourceEvent::FileChunk(chunk) => chunks.push(chunk),
                SourceEvent::Batch(batch) => split.push(batch),
                _ => {}
            }
        }
        // Dealt to a queue nobody takes from: the first chunks, as many per worker, go unsplit.
        let dealt = chunks.len() + split.len();
        assert_eq!(
            chunks.len(),
            dealt.min(split_when_waiting.saturating_mul(ours))
        );
        order(&mut chunks);
        let mut lines = Vec::new();
        let mut chunk_bytes = Vec::new();
        // Each chunk's line numbers are asked for as soon as it is split, before the chunks
        // after it in `order` are split.
        for batch in split
            .into_iter()
            .chain(chunks.into_iter().map(FileChunk::split))
        {
            chunk_bytes.push(batch.data.len());
            lines.extend(lines_of(&batch));
        }
        lines.sort();
        let read = lines.len() as u64;
        assert_eq!(progress.messages.load(Ordering::Relaxed), read);
        (lines, chunk_bytes)
    }

    #[test]
    fn a_mapped_file_is_cut_into_the_same_lines_as_a_read_one() {
        let in_order = |_: &mut Vec<FileChunk>| {};
        for chunk_bytes in [1, 2, 7, 100, 1 << 20] {
            let (lines, sizes) =
                cut_mapped_with(AWKWARD_LINES, chunk_bytes, 1, 1, usize::MAX, in_order);
            let case = format!("chunks of {chunk_bytes} bytes");
            assert_eq!(lines, awkward_lines_expected(), "{case}");
            let (last, full) = sizes.split_last().expect("a chunk");
            assert!(full.iter().all(|&n| n >= chunk_bytes), "{case}");
            assert!(*last >= 1, "{case}");
        }
        // Chunks that span pages, and a file that ends with its newline.
        let text: String = (1..=5000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let (read, _) = read_file_with(&text, 1000, |path, dealer| {
            read_lines_in_place(std::fs::File::open(path).unwrap(), path, dealer, 1 << 20)
        });
        assert_eq!(read.len(), 5000);
        for chunk_bytes in [7, 5000, 100_000] {
            // Split by the workers, by the reader, and by both.
            for split_when_waiting in [usize::MAX, 0, 3] {
                let (mapped, _) =
                    cut_mapped_with(&text, chunk_bytes, 1, 1, split_when_waiting, in_order);
                let case = format!("chunks of {chunk_bytes} bytes, {split_when_waiting}");
                assert_same_lines(&mapped, &read, &case);
            }
        }
    }

    /// Fails at the first line that differs, rather than printing thousands.
    fn assert_same_lines(got: &[(u64, String)], expected: &[(u64, String)], case: &str) {
        for (got, expected) in got.iter().zip(expected) {
            assert_eq!(got, expected, "{case}");
        }
        assert_eq!(got.len(), expected.len(), "{case}");
    }

    #[test]
    fn line_numbers_hold_whatever_order_chunks_are_split_in() {
        let text: String = (1..=3000)
            .map(|i| match i % 7 {
                0 => "\n".to_string(),
                3 => format!("{{\"n\":{i}}}\r\n"),
                _ => format!("{{\"n\":{i}}}\n"),
            })
            .collect();
        let expected: Vec<(u64, String)> = (1..=3000u64)
            .filter(|i| i % 7 != 0)
            .map(|i| (i, format!("{{\"n\":{i}}}")))
            .collect();
        // Later chunks split first: earlier ones are counted when a line number needs them.
        let (lines, _) = cut_mapped_with(&text, 500, 1, 1, usize::MAX, |chunks| chunks.reverse());
        assert_same_lines(&lines, &expected, "split last first");
        // Two workers in another process take every other chunk: the reader counts theirs.
        let (lines, _) = cut_mapped_with(&text, 500, 4, 2, usize::MAX, |_| {});
        let ours: Vec<u64> = lines.iter().map(|(line, _)| *line).collect();
        assert!(!lines.is_empty() && lines.len() < expected.len());
        let expected_ours: Vec<(u64, String)> = expected
            .iter()
            .filter(|(line, _)| ours.contains(line))
            .cloned()
            .collect();
        assert_same_lines(&lines, &expected_ours, "another process's chunks");
    }

    #[test]
    fn a_named_pipe_is_read_as_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.fifo");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || std::fs::write(path, AWKWARD_LINES).unwrap())
        };
        let (sender, receiver) = unbounded_queue(1);
        let mut dealer = Dealer::new(
            sender,
            0,
            1,
            2,
            100,
            positions_for(&BoundedInput::File(path.clone())),
            Arc::new(SourceProgress::default()),
        );
        assert!(read_lines(&path, &mut dealer).is_ok());
        dealer.finish().unwrap();
        writer.join().unwrap();
        let (lines, chunk_sizes) = lines_dealt(&receiver);
        assert_eq!(lines, awkward_lines_expected());
        assert_full_chunks(&chunk_sizes, 2, "a named pipe");
    }
}
