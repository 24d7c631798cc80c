//! Input files read through a memory map. The workers parse the page cache's own bytes, so no
//! byte of the input is copied out of the kernel.
//!
//! The mapped pages would count against the process's memory as the file is read, so they go
//! back to the kernel in windows of [`WINDOW_BYTES`]: a window is released once no chunk holds
//! bytes of it and the reader has moved two windows past it. Nothing reads a released window
//! again, so its pages are not faulted back in (the kernel maps a few neighbouring pages on each
//! fault, which is why the reader keeps a window's distance).
//!
//! A mapped file that shrinks while it is read (truncated or rewritten by another program)
//! would kill the process with a bare "Bus error". While a file is mapped, a `SIGBUS` handler
//! turns a fault inside its bytes into an error message naming the file, and leaves any other
//! fault to the handler that was there before.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};

/// The exit status of a process whose mapped input shrank under it (`EX_IOERR`).
pub const SHRANK_EXIT_STATUS: i32 = 74;

/// The unit in which a mapped file's pages are given back to the kernel.
pub const WINDOW_BYTES: usize = 2 << 20;

/// A whole file mapped read-only, unmapped when dropped.
pub struct MappedFile {
    base: NonNull<u8>,
    len: usize,
    /// For each window of the file, how many chunks hold bytes of it.
    holders: Box<[AtomicU32]>,
    /// The window the reader is in.
    reader_window: AtomicUsize,
    /// Where this mapping is registered for the `SIGBUS` handler.
    guard: GuardSlot,
}

// SAFETY: the mapping is read-only and owned by this value; `&[u8]` views of it are as
// shareable between threads as any other.
unsafe impl Send for MappedFile {}
unsafe impl Sync for MappedFile {}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("len", &self.len)
            .finish()
    }
}

impl MappedFile {
    /// Maps `file` (opened from `path`) whole, or `Ok(None)` when it should be read instead: it
    /// is empty, not a regular file, or the guard for shrinking files has no room.
    pub fn map(file: &File, path: &Path) -> io::Result<Option<MappedFile>> {
        let meta = file.metadata()?;
        let Ok(len) = usize::try_from(meta.len()) else {
            return Ok(None);
        };
        if !meta.file_type().is_file() || len == 0 {
            return Ok(None);
        }
        let message = format!(
            "wrongbook: the input file {} shrank while it was read (its memory-mapped bytes \
             are gone); a file being replayed must not be truncated or rewritten\n",
            path.display()
        );
        // SAFETY: a fresh read-only shared mapping of an open file; no Rust reference to it
        // exists yet.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                // Not mappable (a device or a special file system): read it instead.
                Some(libc::ENODEV | libc::EACCES | libc::EINVAL) => Ok(None),
                _ => Err(error),
            };
        }
        let base = NonNull::new(base.cast::<u8>()).expect("mmap returns a non-null address");
        // SAFETY: the range is the mapping just made. Advice is a hint: failures change
        // nothing but speed.
        unsafe { libc::madvise(base.as_ptr().cast(), len, libc::MADV_SEQUENTIAL) };
        let Some(guard) = GuardSlot::register(base.as_ptr() as usize, len, message) else {
            // SAFETY: unmapping the mapping just made, which nothing refers to.
            unsafe { libc::munmap(base.as_ptr().cast(), len) };
            return Ok(None);
        };
        Ok(Some(MappedFile {
            base,
            len,
            holders: (0..len.div_ceil(WINDOW_BYTES))
                .map(|_| AtomicU32::new(0))
                .collect(),
            reader_window: AtomicUsize::new(0),
            guard,
        }))
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    /// Tells the file that its reader has reached `offset`: windows two behind it that no chunk
    /// holds are released.
    pub fn reader_at(&self, offset: usize) {
        let window = offset / WINDOW_BYTES;
        let before = self.reader_window.load(Ordering::Relaxed);
        if window <= before {
            return;
        }
        self.reader_window.store(window, Ordering::SeqCst);
        for behind in before.saturating_sub(1)..window.saturating_sub(1) {
            if self.holders[behind].load(Ordering::SeqCst) == 0 {
                self.release(behind);
            }
        }
    }

    fn windows(range: &Range<usize>) -> Range<usize> {
        if range.is_empty() {
            return 0..0;
        }
        range.start / WINDOW_BYTES..(range.end - 1) / WINDOW_BYTES + 1
    }

    fn hold(&self, windows: Range<usize>) {
        for window in windows {
            self.holders[window].fetch_add(1, Ordering::SeqCst);
        }
    }

    fn let_go(&self, windows: Range<usize>) {
        for window in windows {
            let last = self.holders[window].fetch_sub(1, Ordering::SeqCst) == 1;
            if last && window + 1 < self.reader_window.load(Ordering::SeqCst) {
                self.release(window);
            }
        }
    }

    /// Gives window `window`'s pages back to the kernel. Its bytes would still read the same (a
    /// read faults them in again from the page cache), but nothing reads them again.
    fn release(&self, window: usize) {
        let start = window * WINDOW_BYTES;
        let end = (start + WINDOW_BYTES).min(self.len);
        // SAFETY: a page-aligned range inside the mapping (WINDOW_BYTES is a multiple of the
        // page size); MADV_DONTNEED on a shared file mapping drops page table entries, never
        // the file's data.
        unsafe {
            libc::madvise(
                self.base.as_ptr().add(start).cast(),
                end - start,
                libc::MADV_DONTNEED,
            )
        };
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        self.guard.unregister();
        // SAFETY: the mapping made by `map`; no `&[u8]` to it outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The bytes `range` of a mapped file, as one chunk of messages: it holds the file's windows it
/// lies in until it is dropped.
#[derive(Debug)]
pub struct MappedChunk {
    file: Arc<MappedFile>,
    range: Range<usize>,
}

impl MappedChunk {
    pub fn new(file: Arc<MappedFile>, range: Range<usize>) -> MappedChunk {
        assert!(range.end <= file.len, "a chunk inside its file");
        file.hold(MappedFile::windows(&range));
        MappedChunk { file, range }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.range.clone()]
    }
}

impl Clone for MappedChunk {
    fn clone(&self) -> MappedChunk {
        MappedChunk::new(self.file.clone(), self.range.clone())
    }
}

impl Drop for MappedChunk {
    fn drop(&mut self) {
        self.file.let_go(MappedFile::windows(&self.range));
    }
}

/// Mapped files the `SIGBUS` handler knows, at most this many at once.
const GUARD_SLOTS: usize = 16;

struct Guarded {
    taken: AtomicBool,
    /// The mapping's first and one-past-last addresses; `start` is 0 while the slot is not
    /// ready for the handler.
    start: AtomicUsize,
    end: AtomicUsize,
    message: AtomicPtr<u8>,
    message_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_GUARD: Guarded = Guarded {
    taken: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    message: AtomicPtr::new(std::ptr::null_mut()),
    message_len: AtomicUsize::new(0),
};

static GUARDED: [Guarded; GUARD_SLOTS] = [EMPTY_GUARD; GUARD_SLOTS];

/// The `SIGBUS` action in place before ours, to pass other faults on to.
static PREVIOUS_ACTION: OnceLock<libc::sigaction> = OnceLock::new();

/// One mapped file's place in [`GUARDED`]; it owns the message the handler writes.
struct GuardSlot {
    index: usize,
    /// The handler's message for this file, which it reads through the slot's pointer.
    _message: Box<[u8]>,
}

impl GuardSlot {
    fn register(start: usize, len: usize, message: String) -> Option<GuardSlot> {
        install_handler();
        let index = GUARDED.iter().position(|slot| {
            slot.taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        let mut message = message.into_bytes().into_boxed_slice();
        let slot = &GUARDED[index];
        slot.message.store(message.as_mut_ptr(), Ordering::Relaxed);
        slot.message_len.store(message.len(), Ordering::Relaxed);
        slot.end.store(start + len, Ordering::Relaxed);
        slot.start.store(start, Ordering::Release);
        Some(GuardSlot {
            index,
            _message: message,
        })
    }

    fn unregister(&self) {
        let slot = &GUARDED[self.index];
        slot.start.store(0, Ordering::Release);
        slot.message.store(std::ptr::null_mut(), Ordering::Relaxed);
        slot.taken.store(false, Ordering::Release);
    }
}

fn install_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: sigaction with a zeroed (empty-mask) action whose handler only reads
        // atomics, writes to stderr and exits, all async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
                let _ = PREVIOUS_ACTION.set(previous);
            }
        }
    });
}

/// Ends the process with the file's message when the fault is inside a mapped input; otherwise
/// puts the previous action back and returns, so the faulting access repeats and meets it.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; si_addr is the
    // faulting address for SIGBUS.
    let address = unsafe { (*info).si_addr() } as usize;
    for slot in &GUARDED {
        let start = slot.start.load(Ordering::Acquire);
        if start != 0 && (start..slot.end.load(Ordering::Relaxed)).contains(&address) {
            let message = slot.message.load(Ordering::Relaxed);
            let len = slot.message_len.load(Ordering::Relaxed);
            // SAFETY: the faulting thread was reading this mapping, so its file (and the
            // message it owns) is alive; write and _exit are async-signal-safe.
            unsafe {
                if !message.is_null() {
                    libc::write(libc::STDERR_FILENO, message.cast(), len);
                }
                libc::_exit(SHRANK_EXIT_STATUS);
            }
        }
    }
    // SAFETY: restoring the action that was in place before ours (or the default).
    unsafe {
        match PREVIOUS_ACTION.get() {
            Some(previous) => libc::sigaction(signal, previous, std::ptr::null_mut()),
            None => {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut())
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident bytes of the mapping that starts at `base`, from `/proc/self/smaps`.
    fn resident_bytes(base: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let start = format!("{base:x}-");
        lines
            .by_ref()
            .find(|line| line.starts_with(&start))
            .expect("the mapping is listed");
        let rss = lines
            .find_map(|line| line.strip_prefix("Rss:"))
            .expect("an Rss line");
        rss.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<usize>()
            .unwrap()
            * 1024
    }

    #[test]
    fn windows_are_released_behind_the_reader_once_no_chunk_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let text: Vec<u8> = (0..6_000_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&path, &text).unwrap();
        let file = File::open(&path).unwrap();
        let mapped = Arc::new(
            MappedFile::map(&file, &path)
                .unwrap()
                .expect("a regular file"),
        );
        let base = mapped.bytes().as_ptr() as usize;
        // A reader cuts ~100 KB chunks and reads them through; chunks are dropped late and out
        // of order (every other one is kept until the reader is 5 chunks further).
        let mut kept = std::collections::VecDeque::new();
        let mut sum = 0u64;
        let chunk_bytes = 100_003;
        let mut start = 0;
        while start < text.len() {
            let end = (start + chunk_bytes).min(text.len());
            let chunk = MappedChunk::new(mapped.clone(), start..end);
            mapped.reader_at(end);
            sum += chunk.bytes().iter().map(|&b| b as u64).sum::<u64>();
            assert_eq!(chunk.bytes(), &text[start..end]);
            if kept.len() % 2 == 0 {
                kept.push_back(chunk);
            }
            if kept.len() > 5 {
                kept.pop_front();
            }
            start = end;
        }
        assert_eq!(sum, text.iter().map(|&b| b as u64).sum::<u64>());
        // What is resident: the windows the kept chunks hold, and the two behind the reader.
        let resident = resident_bytes(base);
        assert!(
            resident <= 4 * WINDOW_BYTES,
            "{resident} bytes resident of {}",
            text.len()
        );
        drop(kept);
        assert!(resident_bytes(base) <= 2 * WINDOW_BYTES);
        // Released bytes still read the same.
        assert_eq!(mapped.bytes(), &text[..]);
    }

    #[test]
    fn empty_files_and_pipes_are_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.jsonl");
        std::fs::write(&path, b"").unwrap();
        let file = File::open(&path).unwrap();
        assert!(MappedFile::map(&file, &path).unwrap().is_none());
        let (reader, _writer) = std::io::pipe().unwrap();
        let pipe = File::from(std::os::fd::OwnedFd::from(reader));
        assert!(MappedFile::map(&pipe, Path::new("a pipe"))
            .unwrap()
            .is_none());
    }

    /// Set in the child process that [`a_file_that_shrinks_while_mapped_fails_naming_it`] starts.
    const SHRINK_CHILD: &str = "WRONGBOOK_TEST_SHRINK_CHILD";

    #[test]
    fn a_file_that_shrinks_while_mapped_fails_naming_it() {
        if let Some(dir) = std::env::var_os(SHRINK_CHILD) {
            // The child: map three pages, truncate the file, read past its new end.
            let path = Path::new(&dir).join("shrinks.jsonl");
            std::fs::write(&path, vec![b'x'; 3 * page_size()]).unwrap();
            let file = File::open(&path).unwrap();
            let mapped = MappedFile::map(&file, &path)
                .unwrap()
                .expect("a regular file");
            std::fs::File::create(&path).unwrap().set_len(0).unwrap();
            let byte = std::hint::black_box(mapped.bytes())[2 * page_size()];
            panic!("read {byte} past the end of a truncated file without a fault");
        }
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "source::mapped::tests::a_file_that_shrinks_while_mapped_fails_naming_it",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(SHRINK_CHILD, dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(SHRANK_EXIT_STATUS), "{stderr}");
        let expected = format!(
            "the input file {} shrank while it was read",
            dir.path().join("shrinks.jsonl").display()
        );
        assert!(stderr.contains(&expected), "{stderr}");
    }
}
