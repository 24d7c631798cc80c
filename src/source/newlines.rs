//! Finding the line ends (`\n`) of a chunk of input, many bytes at a time.
//!
//! A chunk of a file is split into its lines by one pass over its bytes. Searching for each
//! line end in turn (`memchr` from the last one) pays a call, its setup and a partial first
//! block per line, which for lines of a few hundred bytes was much of the search. Here, with
//! AVX2 where the CPU has it, the bytes are compared 128 at a time, and a block that holds line
//! ends gives words with a bit per `\n`, whose set bits are the line ends.

/// Calls `found` with the place of each `\n` in `bytes`, in order.
#[inline]
pub fn for_each_newline(bytes: &[u8], found: impl FnMut(usize)) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::for_each_newline(bytes, found) };
    }
    for_each_newline_portable(bytes, found)
}

/// [`for_each_newline`] without SIMD instructions.
fn for_each_newline_portable(bytes: &[u8], mut found: impl FnMut(usize)) {
    for at in memchr::memchr_iter(b'\n', bytes) {
        found(at);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set1_epi8, _mm256_testz_si256,
    };

    /// [`super::for_each_newline`]: 128 bytes compared at a time, and their line ends, when
    /// they hold any, found from a bit per byte.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn for_each_newline(bytes: &[u8], mut found: impl FnMut(usize)) {
        let newline = _mm256_set1_epi8(b'\n' as i8);
        let at = bytes.as_ptr();
        // Which of the 32 bytes from `from` are `\n`, a byte of all ones each.
        // SAFETY (of each call): `from + 32 <= bytes.len()`; the load is unaligned.
        let equal = |from: usize| unsafe {
            _mm256_cmpeq_epi8(_mm256_loadu_si256(at.add(from).cast::<__m256i>()), newline)
        };
        let bits = |equal: __m256i| _mm256_movemask_epi8(equal) as u32 as u64;
        let mut each_bit = |from: usize, mut mask: u64| {
            while mask != 0 {
                found(from + mask.trailing_zeros() as usize);
                mask &= mask - 1;
            }
        };
        let mut block = 0usize;
        while block + 128 <= bytes.len() {
            let [a, b, c, d] = [0, 32, 64, 96].map(|lane| equal(block + lane));
            let any = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
            if _mm256_testz_si256(any, any) == 0 {
                each_bit(block, bits(a) | bits(b) << 32);
                each_bit(block + 64, bits(c) | bits(d) << 32);
            }
            block += 128;
        }
        while block + 32 <= bytes.len() {
            each_bit(block, bits(equal(block)));
            block += 32;
        }
        for at in memchr::memchr_iter(b'\n', &bytes[block..]) {
            found(block + at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A search for line ends, given where to report them.
    type Search = fn(&[u8], &mut dyn FnMut(usize));

    /// The places `search` finds, and the places of the `\n`s of `bytes` byte by byte.
    fn found_and_expected(bytes: &[u8], search: Search) -> (Vec<usize>, Vec<usize>) {
        let mut found = Vec::new();
        search(bytes, &mut |at| found.push(at));
        let expected = (0..bytes.len()).filter(|&i| bytes[i] == b'\n').collect();
        (found, expected)
    }

    #[test]
    fn every_line_end_is_found_in_order_wherever_it_lies() {
        // Line ends at every place of a block and across the blocks' edges, in texts of every
        // length around the block size, beside bytes that differ from `\n` by one bit; by the
        // search the CPU gets and by the portable one.
        let searches: [(&str, Search); 2] = [
            ("dispatched", |bytes, found| for_each_newline(bytes, found)),
            ("portable", |bytes, found| {
                for_each_newline_portable(bytes, found)
            }),
        ];
        let mut rng = crate::commands::gen::Rng::new(5);
        for len in (0..=300).chain([1000, 4099]) {
            for density in [0usize, 2, 16, 64, 256] {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| match density {
                        d if d > 0 && rng.below(d) == 0 => b'\n',
                        _ => b"a\x0b\x08\x8a\r{"[rng.below(6)],
                    })
                    .collect();
                for (name, search) in searches {
                    let (found, expected) = found_and_expected(&bytes, search);
                    assert_eq!(found, expected, "{name}: length {len}, density {density}");
                }
            }
        }
        for (name, search) in searches {
            let (found, expected) = found_and_expected(&[b'\n'; 130], search);
            assert_eq!(found, expected, "{name}: every byte a line end");
        }
    }
}
