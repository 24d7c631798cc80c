//! Large arrays that are read at random, backed by 2 MiB pages where the kernel allows it
//! (transparent huge pages asked for with `madvise(MADV_HUGEPAGE)`, which also works where the
//! system setting is `madvise`, the usual default).
//!
//! The record slab and the id table are the worker's largest state, and the join reads them in
//! no order. In 4 KiB pages, every first write to a page is a page fault (some 33,000 per 1M
//! events for the records alone) and a record read at random misses the TLB; in 2 MiB pages
//! there are 512 times fewer of both. Memory use is the same but for the last, partly filled
//! 2 MiB page of each array.

/// The huge page size on x86-64 and most ARM64 kernels.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Asks for huge pages on the whole 2 MiB pages inside `vec`'s capacity (none if it spans
/// none). Call it before writing the capacity: a page already faulted in 4 KiB stays so until
/// the kernel's background collapse. Without transparent huge pages, or off Linux, nothing
/// happens: this is advice, and its failure changes no result.
pub fn advise<T>(vec: &Vec<T>) {
    let pages = whole_huge_pages(
        vec.as_ptr() as usize,
        vec.capacity() * std::mem::size_of::<T>(),
    );
    if !pages.is_empty() {
        #[cfg(target_os = "linux")]
        // SAFETY: the range lies inside `vec`'s allocation, which this call does not change;
        // MADV_HUGEPAGE only changes how the kernel backs it.
        unsafe {
            libc::madvise(
                pages.start as *mut libc::c_void,
                pages.len(),
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

/// The addresses of the whole huge pages within `bytes` bytes from `start` (empty if none).
fn whole_huge_pages(start: usize, bytes: usize) -> std::ops::Range<usize> {
    let first = start.next_multiple_of(HUGE_PAGE_BYTES);
    let last = (start + bytes) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    first..last.max(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn only_whole_huge_pages_are_advised() {
        assert_eq!(whole_huge_pages(4 * MIB, 4 * MIB), 4 * MIB..8 * MIB);
        assert_eq!(whole_huge_pages(4 * MIB + 4096, 6 * MIB), 6 * MIB..10 * MIB);
        assert_eq!(
            whole_huge_pages(3 * MIB, 2 * MIB).len(),
            0,
            "spans no whole page"
        );
        assert_eq!(whole_huge_pages(4096, 0).len(), 0);
    }

    #[test]
    fn a_vector_written_after_the_advice_holds_what_was_written() {
        let mut slots: Vec<(u64, u32)> = Vec::with_capacity(3 * HUGE_PAGE_BYTES / 12);
        advise(&slots);
        slots.resize(slots.capacity(), (u64::MAX, 7));
        assert!(slots.iter().all(|&slot| slot == (u64::MAX, 7)));
        advise(&Vec::<u8>::new());
    }
}
