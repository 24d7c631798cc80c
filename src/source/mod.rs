//! Sources: where the dataflow's input comes from. A source runs on its own thread and hands
//! [`SourceBatch`]es to the workers over bounded channels; the dataflow does not know whether
//! they came from a file or from Kafka. Dimension snapshots and the routing table are read
//! from the database by `dims` and `routing`.

pub mod chunk_lines;
pub mod dims;
pub mod file;
pub mod kafka;
pub mod mapped;
pub mod newlines;
pub mod routing;

use std::ops::Range;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use serde_json::json;

use crate::event::RawMessage;

/// Where one message came from, for dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePosition {
    /// Line `line` (1-based) of a JSONL file.
    Line { file: Arc<str>, line: u64 },
    /// An in-memory message, by index.
    Index(u64),
    /// A Kafka message.
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
}

impl SourcePosition {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            SourcePosition::Line { file, line } => json!({ "file": file.as_ref(), "line": line }),
            SourcePosition::Index(index) => json!({ "index": index }),
            SourcePosition::Kafka {
                topic,
                partition,
                offset,
            } => json!({ "topic": topic.as_ref(), "partition": partition, "offset": offset }),
        }
    }
}

/// How the messages of a batch are located in their source.
#[derive(Debug, Clone)]
pub enum Positions {
    /// Non-blank lines of a file: message `i` is on line `lines[i]` counted from `base`.
    Lines {
        file: Arc<str>,
        base: LineBase,
        lines: Vec<u64>,
    },
    /// In-memory messages starting at `first`.
    Indexed { first: u64 },
    /// Kafka messages: `partitions[i]` and `offsets[i]` locate message `i`; `timestamps[i]`
    /// is its Kafka timestamp in ms (`None` when the broker gave none).
    Kafka {
        topic: Arc<str>,
        partitions: Vec<i32>,
        offsets: Vec<i64>,
        timestamps: Vec<Option<i64>>,
    },
}

/// A batch of raw messages for one worker, all of one epoch (for sources that assign epochs;
/// streaming sources leave it 0 and the worker stamps the batch with its clock).
#[derive(Debug, Clone)]
pub struct SourceBatch {
    pub epoch: u64,
    /// The messages' bytes: back to back when pushed, or the source's own bytes read in place
    /// or mapped (then line ends and blank lines lie between the messages).
    pub data: ChunkBytes,
    /// `data[spans[i].clone()]` is message `i`.
    pub spans: Vec<Range<usize>>,
    pub positions: Positions,
}

impl SourceBatch {
    pub fn new(epoch: u64, positions: Positions) -> SourceBatch {
        SourceBatch {
            epoch,
            data: ChunkBytes::Owned(Vec::new()),
            spans: Vec::new(),
            positions,
        }
    }

    /// Appends a copy of `message`.
    pub fn push(&mut self, message: &[u8]) {
        let data = self.data.owned();
        let start = data.len();
        data.extend_from_slice(message);
        self.spans.push(start..data.len());
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The messages with their index in the batch, each as text where it is UTF-8 (see
    /// [`Utf8Runs`]).
    pub fn messages(&self) -> impl Iterator<Item = (usize, RawMessage<'_>)> {
        let bytes = self.data.bytes();
        let mut runs = Utf8Runs::new(bytes);
        self.spans.iter().enumerate().map(move |(i, span)| {
            let message = match runs.text(span.clone()) {
                Some(text) => RawMessage::Text(text),
                None => RawMessage::Bytes(&bytes[span.clone()]),
            };
            (i, message)
        })
    }

    /// The Kafka timestamp of message `i`, when it has one.
    pub fn timestamp(&self, i: usize) -> Option<i64> {
        match &self.positions {
            Positions::Kafka { timestamps, .. } => timestamps[i],
            _ => None,
        }
    }

    /// Where message `i` came from.
    pub fn position(&self, i: usize) -> SourcePosition {
        match &self.positions {
            Positions::Lines { file, base, lines } => SourcePosition::Line {
                file: file.clone(),
                line: base.lines_before() + lines[i],
            },
            Positions::Indexed { first } => SourcePosition::Index(first + i as u64),
            Positions::Kafka {
                topic,
                partitions,
                offsets,
                ..
            } => SourcePosition::Kafka {
                topic: topic.clone(),
                partition: partitions[i],
                offset: offsets[i],
            },
        }
    }
}

/// Where a batch's line numbers count from.
#[derive(Debug, Clone)]
pub enum LineBase {
    /// The file's start: the numbers are the lines' own.
    Start,
    /// The start of a mapped file's chunk (by index), whose line numbers are worked out when
    /// asked for.
    Chunk(Arc<chunk_lines::ChunkLines>, usize),
}

impl LineBase {
    /// The lines before the first one counted from here.
    pub fn lines_before(&self) -> u64 {
        match self {
            LineBase::Start => 0,
            LineBase::Chunk(lines, index) => lines.lines_before(*index),
        }
    }
}

/// Which messages of a batch are UTF-8, found by checking the batch's bytes in long runs: from
/// a message to the first invalid byte after it (or the batch's end) in one pass. A check per
/// message took ~2.4 % of a worker's instructions, half of it a call and a copied tail each.
///
/// A message is text when it lies inside a checked run and starts and ends on character
/// boundaries (the messages of a Kafka batch lie back to back, so a run's text can join two
/// messages' bytes). A message that holds an invalid byte is left to the parser, which finds
/// the place of the error; the next message starts a new run. So is a message that is not on
/// boundaries: it is not UTF-8 by itself, unless it is empty.
struct Utf8Runs<'a> {
    bytes: &'a [u8],
    /// A run of `bytes` known to be UTF-8, and where it starts in them.
    run: &'a str,
    run_start: usize,
}

impl<'a> Utf8Runs<'a> {
    fn new(bytes: &'a [u8]) -> Utf8Runs<'a> {
        Utf8Runs {
            bytes,
            run: "",
            run_start: 0,
        }
    }

    /// `bytes[span]` as text, when it is UTF-8.
    fn text(&mut self, span: Range<usize>) -> Option<&'a str> {
        if span.start < self.run_start || span.end > self.run_start + self.run.len() {
            let rest = &self.bytes[span.start..];
            self.run_start = span.start;
            self.run = match simdutf8::compat::from_utf8(rest) {
                Ok(text) => text,
                // SAFETY: the bytes up to `valid_up_to` are UTF-8; that is what it reports.
                Err(e) => unsafe { std::str::from_utf8_unchecked(&rest[..e.valid_up_to()]) },
            };
        }
        self.run
            .get(span.start - self.run_start..span.end - self.run_start)
    }
}

/// The bytes a batch's messages lie in.
#[derive(Debug, Clone)]
pub enum ChunkBytes {
    /// Bytes of the batch's own: copied, or read into it.
    Owned(Vec<u8>),
    /// Part of a memory-mapped file, given back to the kernel when the batch is dropped.
    Mapped(mapped::MappedChunk),
}

impl ChunkBytes {
    pub fn bytes(&self) -> &[u8] {
        match self {
            ChunkBytes::Owned(data) => data,
            ChunkBytes::Mapped(chunk) => chunk.bytes(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The bytes as a vector to add to; mapped bytes are copied into one first.
    pub fn owned(&mut self) -> &mut Vec<u8> {
        if let ChunkBytes::Mapped(chunk) = self {
            *self = ChunkBytes::Owned(chunk.bytes().to_vec());
        }
        match self {
            ChunkBytes::Owned(data) => data,
            ChunkBytes::Mapped(_) => unreachable!("mapped bytes were just copied"),
        }
    }
}

/// What a source tells a worker.
#[derive(Debug)]
pub enum SourceEvent {
    Batch(SourceBatch),
    /// A chunk of a mapped file, for the worker to split into a batch.
    FileChunk(chunk_lines::FileChunk),
    /// Everything that was in the source when the job started has been sent.
    CaughtUp,
    /// No more input; every worker advances to `final_epoch`.
    End {
        final_epoch: u64,
    },
    /// The source failed; the job stops with this message.
    Failed(String),
}

/// The workers stopped listening (the job is failing or done).
#[derive(Debug)]
pub struct Closed;

/// The sending end of a source queue, which one worker or several take from. A worker with
/// nothing to do parks its thread until timely has work for it or a millisecond passes; a send
/// into an empty queue wakes its workers, so that a worker which ran out of input does not
/// sleep out the millisecond while its next chunk waits (on two workers of two cores the
/// reader often gets a core only when a worker parks). It has one sender, the source that
/// owns it.
///
/// A queue that several workers share ([`shared_queue`]) hands each chunk to whichever is free
/// first, so none runs out while another has a backlog. A bounded input's workers share one
/// queue: dealt to a queue per worker, the chunks waiting when the input ended were the
/// workers' until they were done, and the worker whose core the reader shared finished several
/// milliseconds after the other.
pub struct WorkerQueue {
    sender: Sender<SourceEvent>,
    workers: Arc<[OnceLock<Thread>]>,
    room: Arc<Room>,
}

/// The receiving end of a source queue, before its worker takes it.
pub struct WorkerInbox {
    receiver: Receiver<SourceEvent>,
    workers: Arc<[OnceLock<Thread>]>,
    /// Which of the queue's workers this is.
    slot: usize,
    room: Arc<Room>,
}

/// How a source that found its queue full ([`WorkerQueue::send_when_room`]) is woken: by the
/// worker whose take leaves the queue at half, not by every event a worker takes. Woken per
/// event, the source of a bounded input (which keeps ahead of the workers) slept and woke once
/// per chunk, about a thousand times per million messages, each time taking the core of a
/// worker for a moment; woken at half, it fills the queue again in one go.
#[derive(Default)]
struct Room {
    /// Whether the source waits for room in the queue.
    waiting: AtomicBool,
    /// The source's thread, once it has waited.
    source: OnceLock<Thread>,
}

/// One worker's source queue holding at most `capacity` events.
pub fn worker_queue(capacity: usize) -> (WorkerQueue, WorkerInbox) {
    let (queue, mut inboxes) = shared_queue(capacity, 1);
    (queue, inboxes.pop().expect("one inbox"))
}

/// A source queue holding at most `capacity` events that `workers` workers take from, each
/// through its own inbox.
pub fn shared_queue(capacity: usize, workers: usize) -> (WorkerQueue, Vec<WorkerInbox>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity);
    let queue = WorkerQueue {
        sender,
        workers: (0..workers.max(1)).map(|_| OnceLock::new()).collect(),
        room: Arc::new(Room::default()),
    };
    let inboxes = (0..queue.workers.len())
        .map(|slot| WorkerInbox {
            receiver: receiver.clone(),
            workers: queue.workers.clone(),
            slot,
            room: queue.room.clone(),
        })
        .collect();
    (queue, inboxes)
}

impl WorkerQueue {
    /// Sends `event`, waiting while the queue is full; wakes the workers when the queue was
    /// empty. Fails once the workers have gone.
    pub fn send(&self, event: SourceEvent) -> Result<(), Closed> {
        self.sender.send(event).map_err(|_| Closed)?;
        self.wake_if_first();
        Ok(())
    }

    /// Sends one event made by `make` to each worker of the queue (an end or a failure): a
    /// worker takes no more events after one of those.
    pub fn send_to_each(&self, make: impl Fn() -> SourceEvent) -> Result<(), Closed> {
        (0..self.workers()).try_for_each(|_| self.send(make()))
    }

    /// How many workers take from the queue.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Events waiting in the queue.
    pub fn len(&self) -> usize {
        self.sender.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sender.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.sender.is_full()
    }

    /// Whether the queue has drained to half, where its workers wake a waiting source.
    fn at_half(&self) -> bool {
        self.sender
            .capacity()
            .is_some_and(|capacity| self.sender.len() <= capacity / 2)
    }

    fn wake_if_first(&self) {
        // The one sender of this queue made it non-empty: its workers may have found it empty
        // and parked (or be about to: an unpark before the park makes the park return).
        if self.sender.len() <= 1 {
            for worker in self.workers.iter().filter_map(OnceLock::get) {
                worker.unpark();
            }
        }
    }
}

/// How long a source waiting for room sleeps before it looks at the queue again unwoken:
/// only workers that have gone leave it unwoken (the queue then takes no more).
const ROOM_LOOK_INTERVAL: Duration = Duration::from_millis(50);

impl WorkerQueue {
    /// Sends `event` once the queue has room: while it is full, waits until the workers have
    /// drained it to half (see [`Room`]). Fails once the workers have gone.
    pub fn send_when_room(&self, event: SourceEvent) -> Result<(), Closed> {
        self.send_when_room_looking_every(event, ROOM_LOOK_INTERVAL)
    }

    /// [`WorkerQueue::send_when_room`], looking at the queue every `interval` while it waits
    /// unwoken.
    fn send_when_room_looking_every(
        &self,
        mut event: SourceEvent,
        interval: Duration,
    ) -> Result<(), Closed> {
        loop {
            match self.sender.try_send(event) {
                Ok(()) => {
                    self.wake_if_first();
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => event = back,
                Err(TrySendError::Disconnected(_)) => return Err(Closed),
            }
            self.room.source.get_or_init(std::thread::current);
            self.room.waiting.store(true, Ordering::SeqCst);
            // A worker that took the queue to half before it could see the flag is seen here.
            fence(Ordering::SeqCst);
            let until = Instant::now() + interval;
            while !self.at_half() {
                match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => std::thread::park_timeout(left),
                    _ => break,
                }
            }
            self.room.waiting.store(false, Ordering::Relaxed);
        }
    }
}

/// A queue without a bound that `workers` workers would take from, whose sends wake nobody,
/// for tests that read it after the source is done.
#[cfg(test)]
pub(crate) fn unbounded_queue(workers: usize) -> (WorkerQueue, Receiver<SourceEvent>) {
    let (sender, receiver) = crossbeam_channel::unbounded();
    let queue = WorkerQueue {
        sender,
        workers: (0..workers).map(|_| OnceLock::new()).collect(),
        room: Arc::new(Room::default()),
    };
    (queue, receiver)
}

impl WorkerInbox {
    /// The queue, for the calling thread, which the queue's sends wake from now on.
    pub fn open(self) -> WorkerSource {
        let _ = self.workers[self.slot].set(std::thread::current());
        WorkerSource {
            half: self.receiver.capacity().map_or(0, |capacity| capacity / 2),
            receiver: self.receiver,
            room: self.room,
        }
    }
}

/// The receiving end of a worker's source queue, opened by its worker: taking an event that
/// leaves the queue at half wakes a source waiting for room (see [`Room`]).
pub struct WorkerSource {
    receiver: Receiver<SourceEvent>,
    room: Arc<Room>,
    /// Events left in the queue at which a waiting source is woken.
    half: usize,
}

impl WorkerSource {
    pub fn try_recv(&self) -> Result<SourceEvent, TryRecvError> {
        let event = self.receiver.try_recv()?;
        self.took();
        Ok(event)
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<SourceEvent, RecvTimeoutError> {
        let event = self.receiver.recv_timeout(timeout)?;
        self.took();
        Ok(event)
    }

    fn took(&self) {
        // Pairs with the source's fence: either it sees this take, or this sees it wait.
        fence(Ordering::SeqCst);
        if self.room.waiting.load(Ordering::Relaxed)
            && self.receiver.len() <= self.half
            && self.room.waiting.swap(false, Ordering::AcqRel)
        {
            if let Some(source) = self.room.source.get() {
                source.unpark();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A worker that found its queue empty parks (as timely's `step_or_park` does); the next
    /// send must wake it rather than leave its input waiting until the park times out.
    #[test]
    fn a_send_into_an_empty_queue_wakes_its_parked_worker() {
        let (queue, inbox) = worker_queue(4);
        let receiver = inbox.open();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            queue.send(SourceEvent::CaughtUp).unwrap();
            queue
        });
        assert!(
            take_parking_between_tries(&receiver) < Duration::from_secs(30),
            "the send did not wake the parked worker"
        );
        drop(sender.join().unwrap());
    }

    /// Takes an event from `receiver`, parking (as a worker with nothing to do does) each time
    /// it finds none; gives how long that took. The parks are far longer than a test may
    /// take, so only an unpark ends one in time.
    fn take_parking_between_tries(receiver: &WorkerSource) -> Duration {
        let started = Instant::now();
        let mut parks = 0;
        while receiver.try_recv().is_err() {
            std::thread::park_timeout(Duration::from_secs(60));
            parks += 1;
            assert!(parks < 1000, "woken without input over and over");
        }
        started.elapsed()
    }

    /// Workers that share a queue and found it empty all park; sends into it wake each.
    #[test]
    fn a_send_into_an_empty_shared_queue_wakes_its_parked_workers() {
        let (queue, inboxes) = shared_queue(4, 2);
        let (ready_tx, ready) = crossbeam_channel::unbounded();
        let workers: Vec<_> = inboxes
            .into_iter()
            .map(|inbox| {
                let ready_tx = ready_tx.clone();
                std::thread::spawn(move || {
                    let receiver = inbox.open();
                    ready_tx.send(()).unwrap();
                    take_parking_between_tries(&receiver)
                })
            })
            .collect();
        for _ in 0..2 {
            ready.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        queue.send(SourceEvent::CaughtUp).unwrap();
        queue.send(SourceEvent::CaughtUp).unwrap();
        for worker in workers {
            assert!(
                worker.join().unwrap() < Duration::from_secs(30),
                "a send did not wake a parked worker"
            );
        }
    }

    /// Every message comes out as text exactly when its own bytes are UTF-8, whatever lies
    /// around it: valid and invalid neighbours, and neighbours back to back whose bytes
    /// together make a character that neither holds alone.
    #[test]
    fn a_batchs_messages_are_text_exactly_when_each_is_utf8() {
        let pieces: [&[u8]; 7] = [
            b"{\"a\":1}",
            "科目".as_bytes(),
            b"\xE7\xA7",
            b"\x91x",
            b"ok\xFFok",
            b"",
            b"\xF0\x9F\x98\x80!",
        ];
        let mut cases = 0;
        for separator in [&b""[..], b"\n"] {
            for a in 0..pieces.len() {
                for b in 0..pieces.len() {
                    for c in 0..pieces.len() {
                        let messages = [pieces[a], pieces[b], pieces[c]];
                        let mut batch = SourceBatch::new(0, Positions::Indexed { first: 0 });
                        let data = batch.data.owned();
                        for message in messages {
                            let start = data.len();
                            data.extend_from_slice(message);
                            batch.spans.push(start..data.len());
                            data.extend_from_slice(separator);
                        }
                        let got: Vec<RawMessage<'_>> =
                            batch.messages().map(|(_, message)| message).collect();
                        assert_eq!(got.len(), 3);
                        for (message, raw) in messages.iter().zip(got) {
                            assert_eq!(raw.bytes(), *message, "{messages:?}");
                            match std::str::from_utf8(message) {
                                // An empty message inside a character (between two halves
                                // of it) is left to the parser, which finds it valid.
                                Ok("") => {}
                                Ok(text) => assert_eq!(raw, RawMessage::Text(text), "{messages:?}"),
                                Err(_) => {
                                    assert!(matches!(raw, RawMessage::Bytes(_)), "{messages:?}")
                                }
                            }
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 7 * 7 * 7);
    }

    /// A source that found the queue full sleeps until its workers have drained it to half,
    /// not until the first event is taken: on two workers of two cores, waking per chunk took
    /// a worker's core about a thousand times per million messages.
    #[test]
    fn a_source_waiting_for_room_is_woken_when_the_queue_drains_to_half() {
        let (queue, inboxes) = shared_queue(4, 2);
        let receivers: Vec<_> = inboxes.into_iter().map(WorkerInbox::open).collect();
        for _ in 0..4 {
            queue.send(SourceEvent::CaughtUp).unwrap();
        }
        let sent = Arc::new(AtomicBool::new(false));
        let room = queue.room.clone();
        let source = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                // Far longer than the test may take: only a wake-up lets it send in time.
                let result = queue
                    .send_when_room_looking_every(SourceEvent::CaughtUp, Duration::from_secs(60));
                sent.store(true, Ordering::SeqCst);
                result
            })
        };
        let take = |worker: usize| {
            receivers[worker]
                .recv_timeout(Duration::from_secs(10))
                .unwrap()
        };
        let waiting_since = Instant::now();
        while !room.waiting.load(Ordering::SeqCst) {
            assert!(
                waiting_since.elapsed() < Duration::from_secs(30),
                "the source never waits"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Three of four left: the source sleeps on.
        take(0);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !sent.load(Ordering::SeqCst),
            "woken before the queue drained to half"
        );
        // The other worker's take leaves it at half.
        let started = Instant::now();
        take(1);
        source.join().unwrap().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the take that left the queue at half did not wake the source"
        );
    }
}
