//! A strict RFC 8259 JSON scanner over borrowed text, for messages on the hot path.
//!
//! An object is walked one entry at a time: keys and string values come back borrowed from the
//! input unless they hold escapes, numbers as their literal text, and nested objects and arrays
//! as raw slices, skipped without building a tree. Everything scanned is validated, including
//! what nobody reads: string escapes (a `\u` escape must not be a lone surrogate), control
//! characters, number syntax, and nesting at any depth (skipped iteratively, so deep input
//! cannot overflow the stack). No value is parsed twice and nothing is allocated unless a
//! string holds an escape or containers nest.

use std::borrow::Cow;
use std::fmt;

/// Why text is not RFC 8259 JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset of the problem.
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for SyntaxError {}

/// One JSON value, as much of it as the scanner decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The literal, validated; `integer` when it has no fraction and no exponent, and then
    /// `value` is its value when that fits an `i64` (read in the same pass as the literal).
    Number {
        text: &'a str,
        integer: bool,
        value: Option<i64>,
    },
    /// The decoded string.
    String(Cow<'a, str>),
    /// The raw text of an object, validated.
    Object(&'a str),
    /// The raw text of an array, validated.
    Array(&'a str),
}

impl Value<'_> {
    /// What kind of value this is, for messages ("a string", "an array", …).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number { .. } => "a number",
            Value::String(_) => "a string",
            Value::Object(_) => "an object",
            Value::Array(_) => "an array",
        }
    }
}

/// A cursor over JSON text.
pub struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Inside an object: whether an entry has been read (so the next needs a comma).
    entries: bool,
}

type Result<T> = std::result::Result<T, SyntaxError>;

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Scanner<'a> {
        Scanner {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            entries: false,
        }
    }

    /// The text from `start` to `end`, both of which the scanner reached: every place it stops
    /// is at an ASCII byte (a quote, a bracket, a digit, …), just past one, or at the end, so
    /// both are character boundaries and in range, and the checks `&text[start..end]` would
    /// make (two boundary tests and a range test, for each of some 25 strings per message)
    /// are left out.
    #[inline(always)]
    fn slice(&self, start: usize, end: usize) -> &'a str {
        debug_assert!(start <= end && self.text.is_char_boundary(start));
        debug_assert!(self.text.is_char_boundary(end));
        // SAFETY: see above; debug builds (and so the tests) check it.
        unsafe { self.text.get_unchecked(start..end) }
    }

    fn error<T>(&self, what: &'static str) -> Result<T> {
        Err(SyntaxError { at: self.pos, what })
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        // Most messages have no whitespace between tokens: every byte past the space is not
        // whitespace, which one comparison tells.
        if self.bytes.get(self.pos).is_some_and(|&b| b > b' ') {
            return;
        }
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.pos).copied()
    }

    /// Consumes the `{` that opens an object.
    pub fn begin_object(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                self.entries = false;
                Ok(())
            }
            None => self.error("EOF while parsing a value"),
            Some(_) => self.error("expected an object"),
        }
    }

    /// The key of the object's next entry, its colon consumed; `None` after the closing `}`.
    /// Call [`Scanner::value`] (or [`Scanner::skip_value`]) before asking again.
    ///
    /// Inlined, as [`Scanner::value`] is, into the loops that walk objects: as calls, the two
    /// saved and restored some 40 registers' worth per entry, more than a short key's scan.
    #[inline(always)]
    pub fn next_key(&mut self) -> Result<Option<Cow<'a, str>>> {
        // Compact JSON (`,"key":`) is told by its bytes alone, without a whitespace check
        // before each token; anything else takes the general path below.
        if self.entries && self.bytes.get(self.pos..self.pos + 2) == Some(b",\"") {
            self.pos += 1;
            let key = self.string()?;
            return self.colon_after(key);
        }
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if self.entries => {
                self.pos += 1;
                if self.peek() != Some(b'"') {
                    return self.error("expected a key after a comma");
                }
            }
            Some(b'"') if !self.entries => {}
            None => return self.error("EOF while parsing an object"),
            Some(_) if self.entries => return self.error("expected `,` or `}`"),
            Some(_) => return self.error("expected a key or `}`"),
        }
        self.entries = true;
        let key = self.string()?;
        self.colon_after(key)
    }

    /// Consumes the colon after `key`.
    #[inline(always)]
    fn colon_after(&mut self, key: Cow<'a, str>) -> Result<Option<Cow<'a, str>>> {
        if self.bytes.get(self.pos) != Some(&b':') && self.peek() != Some(b':') {
            return self.error("expected `:` after a key");
        }
        self.pos += 1;
        Ok(Some(key))
    }

    /// The next value, decoded (objects and arrays as validated raw text).
    #[inline(always)]
    pub fn value(&mut self) -> Result<Value<'a>> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::String),
            Some(b'{') => {
                let start = self.pos;
                self.skip_container()?;
                Ok(Value::Object(self.slice(start, self.pos)))
            }
            Some(b'[') => {
                let start = self.pos;
                self.skip_container()?;
                Ok(Value::Array(self.slice(start, self.pos)))
            }
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            None => self.error("EOF while parsing a value"),
            Some(_) => self.error("expected a value"),
        }
    }

    /// The entries of the object at the cursor, appended to `into` (nested objects and arrays
    /// as raw text), its closing `}` consumed. Usable inside another object's walk.
    pub fn object_entries(&mut self, into: &mut Vec<(Cow<'a, str>, Value<'a>)>) -> Result<()> {
        self.object_with(|scanner, key| {
            let value = scanner.value()?;
            into.push((key, value));
            Ok(())
        })
    }

    /// Walks the object at the cursor: `entry` gets each key with the cursor at its value,
    /// and must consume that value ([`Scanner::value`] or [`Scanner::skip_value`]); the closing
    /// `}` is consumed. Usable inside another object's walk.
    #[inline(always)]
    pub fn object_with(
        &mut self,
        mut entry: impl FnMut(&mut Scanner<'a>, Cow<'a, str>) -> Result<()>,
    ) -> Result<()> {
        let outer = self.entries;
        self.begin_object()?;
        while let Some(key) = self.next_key()? {
            entry(self, key)?;
        }
        self.entries = outer;
        Ok(())
    }

    /// Skips the next value, validating it.
    pub fn skip_value(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'{' | b'[') => self.skip_container(),
            Some(b'"') => self.skip_string(),
            _ => self.value().map(drop),
        }
    }

    /// Succeeds when only whitespace is left.
    pub fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.error("trailing characters"),
        }
    }

    fn literal(&mut self, word: &'static str, value: Value<'a>) -> Result<Value<'a>> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            self.error("expected a value")
        }
    }

    fn digits(&mut self) -> usize {
        let (len, _) = digit_run(self.bytes, self.pos);
        self.pos += len;
        len
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    ///
    /// Always inlined into [`Scanner::value`]: as a call (some two per message), its saved
    /// registers and the value returned through memory cost a fifth of a number's scan.
    #[inline(always)]
    fn number(&mut self) -> Result<Value<'a>> {
        let start = self.pos;
        let negative = self.bytes[self.pos] == b'-';
        if negative {
            self.pos += 1;
        }
        let magnitude = match self.bytes.get(self.pos) {
            Some(b'0') => {
                self.pos += 1;
                Some(0)
            }
            Some(b'1'..=b'9') => {
                let (len, magnitude) = digit_run(self.bytes, self.pos);
                self.pos += len;
                (len <= 19).then_some(magnitude)
            }
            _ => return self.error("invalid number"),
        };
        let mut integer = true;
        if self.bytes.get(self.pos) == Some(&b'.') {
            integer = false;
            self.pos += 1;
            if self.digits() == 0 {
                return self.error("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.error("invalid number");
            }
        }
        let value = magnitude.filter(|_| integer).and_then(|m| match negative {
            true => 0i64.checked_sub_unsigned(m),
            false => i64::try_from(m).ok(),
        });
        Ok(Value::Number {
            text: self.slice(start, self.pos),
            integer,
            value,
        })
    }

    /// Advances over string bytes that need no attention; stops at `"`, `\\` or a control
    /// character. Sixteen bytes at a time where SSE2 compares them (most keys and values then
    /// take one step), then eight at a time: for a word `x`, `(x - 0x01…) & !x & 0x80…` flags
    /// its zero bytes, exactly up to the first one, so the lowest flag is the first byte to
    /// stop at. Always inlined: as a call (which the compiler chose once the payload's
    /// checks were inlined into its walk) it cost ~40 instructions per string, as much as
    /// the run.
    #[inline(always)]
    fn plain_run(&mut self) {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        let bytes = self.bytes;
        let mut i = self.pos;
        #[cfg(target_arch = "x86_64")]
        while let Some(chunk) = bytes.get(i..i + 16) {
            // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code runs on has it.
            let stops = unsafe { sse2::stops(chunk.try_into().expect("sixteen bytes")) };
            if stops != 0 {
                self.pos = i + stops.trailing_zeros() as usize;
                return;
            }
            i += 16;
        }
        while let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let quote = word ^ (ONES * u64::from(b'"'));
            let backslash = word ^ (ONES * u64::from(b'\\'));
            let flags = (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash)
                | (word.wrapping_sub(ONES * 0x20) & !word);
            let flags = flags & HIGH;
            if flags != 0 {
                self.pos = i + (flags.trailing_zeros() / 8) as usize;
                return;
            }
            i += 8;
        }
        while let Some(&b) = bytes.get(i) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            i += 1;
        }
        self.pos = i;
    }

    /// A string at the cursor (at its opening quote), decoded; borrowed without escapes.
    /// Inlined into its three callers: a call's saved registers cost as much as a short
    /// string's scan.
    #[inline(always)]
    fn string(&mut self) -> Result<Cow<'a, str>> {
        self.pos += 1;
        let start = self.pos;
        self.plain_run();
        if self.bytes.get(self.pos) == Some(&b'"') {
            self.pos += 1;
            return Ok(Cow::Borrowed(self.slice(start, self.pos - 1)));
        }
        self.string_rest(start)
    }

    /// The rest of a string that does not end at its first stop (`start` is its first byte,
    /// the cursor at that stop): decoded when it holds escapes, else an error.
    #[cold]
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Result<Cow<'a, str>> {
        match self.bytes.get(self.pos) {
            Some(b'\\') => {}
            Some(_) => return self.error("control character in a string"),
            None => return self.error("EOF while parsing a string"),
        }
        // Decoded in the same pass that validates it. The escaped text is at least as long as
        // what it decodes to, so room for the rest of the message, up to a short string's worth,
        // is taken at once: a short string is allocated once and never grows (a long one grows
        // as it is decoded, rather than reserving a long message's length for each string).
        let mut decoded = String::with_capacity((self.bytes.len() - start).min(256));
        decoded.push_str(self.slice(start, self.pos));
        loop {
            match self.bytes.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(decoded));
                }
                Some(b'\\') => decoded.push(self.escape()?),
                Some(_) => return self.error("control character in a string"),
                None => return self.error("EOF while parsing a string"),
            }
            let run = self.pos;
            self.plain_run();
            decoded.push_str(self.slice(run, self.pos));
        }
    }

    /// Validates a string at the cursor without decoding it.
    fn skip_string(&mut self) -> Result<()> {
        self.pos += 1;
        loop {
            self.plain_run();
            match self.bytes.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.escape()?;
                }
                Some(_) => return self.error("control character in a string"),
                None => return self.error("EOF while parsing a string"),
            }
        }
    }

    /// An escape at the cursor (at its backslash), as the character it stands for.
    fn escape(&mut self) -> Result<char> {
        let Some(&kind) = self.bytes.get(self.pos + 1) else {
            return self.error("EOF while parsing a string");
        };
        self.pos += 2;
        Ok(match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                match unit {
                    0xD800..=0xDBFF => {
                        if self.bytes.get(self.pos) != Some(&b'\\')
                            || self.bytes.get(self.pos + 1) != Some(&b'u')
                        {
                            return self.error("a \\u escape is a lone surrogate");
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return self.error("a \\u escape is a lone surrogate");
                        }
                        let code = 0x10000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        char::from_u32(code).expect("a surrogate pair is a scalar value")
                    }
                    0xDC00..=0xDFFF => return self.error("a \\u escape is a lone surrogate"),
                    _ => char::from_u32(u32::from(unit)).expect("not a surrogate"),
                }
            }
            _ => {
                self.pos -= 1;
                return self.error("invalid escape");
            }
        })
    }

    fn hex4(&mut self) -> Result<u16> {
        let mut unit = 0u16;
        for _ in 0..4 {
            let digit = match self.bytes.get(self.pos) {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                None => return self.error("EOF while parsing a string"),
                Some(_) => return self.error("invalid \\u escape"),
            };
            unit = unit << 4 | u16::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }

    /// Skips an object or array at the cursor, at any depth, without recursion.
    fn skip_container(&mut self) -> Result<()> {
        let mut open = OpenContainers::default();
        // Whether the cursor is just inside a container (so it may close at once).
        let mut fresh;
        'value: loop {
            // At a value's first byte (a container's, on the first round).
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    open.push(true);
                    fresh = true;
                }
                Some(b'[') => {
                    self.pos += 1;
                    open.push(false);
                    fresh = true;
                }
                Some(b'"') => {
                    self.skip_string()?;
                    fresh = false;
                }
                _ => {
                    self.value()?;
                    fresh = false;
                }
            }
            // After a value, or just inside a container: close, or go on to the next value.
            loop {
                let Some(object) = open.innermost() else {
                    return Ok(());
                };
                let closer = if object { b'}' } else { b']' };
                let next = self.peek();
                if next == Some(closer) {
                    self.pos += 1;
                    open.pop();
                    fresh = false;
                    continue;
                }
                if !fresh {
                    match next {
                        Some(b',') => self.pos += 1,
                        None => return self.error("EOF while parsing a container"),
                        Some(_) if object => return self.error("expected `,` or `}`"),
                        Some(_) => return self.error("expected `,` or `]`"),
                    }
                }
                if object {
                    if self.peek() != Some(b'"') {
                        return self.error("expected a key");
                    }
                    self.skip_string()?;
                    if self.peek() != Some(b':') {
                        return self.error("expected `:` after a key");
                    }
                    self.pos += 1;
                } else if fresh && next.is_none() {
                    return self.error("EOF while parsing a container");
                }
                continue 'value;
            }
        }
    }
}

/// Sixteen string bytes compared at once (SSE2 is part of every x86-64 CPU).
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_set_epi64x,
    };

    /// A bit per byte of `chunk` (bit `i` for byte `i`) that is `"`, `\\` or below 0x20.
    #[inline]
    #[target_feature(enable = "sse2")]
    pub(super) fn stops(chunk: &[u8; 16]) -> u32 {
        let (low, high) = chunk.split_at(8);
        let low = i64::from_le_bytes(low.try_into().expect("eight bytes"));
        let high = i64::from_le_bytes(high.try_into().expect("eight bytes"));
        let bytes = _mm_set_epi64x(high, low);
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        // Unsigned: a byte is below 0x20 exactly when max(byte, 0x1f) is 0x1f.
        let control = _mm_cmpeq_epi8(
            _mm_max_epu8(bytes, _mm_set1_epi8(0x1f)),
            _mm_set1_epi8(0x1f),
        );
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// The kinds of the containers open while skipping, innermost last: a bit per level (set for an
/// object), in a word for the first 64 levels, so that the usual shallow message allocates
/// nothing.
#[derive(Default)]
struct OpenContainers {
    depth: usize,
    shallow: u64,
    deep: Vec<bool>,
}

impl OpenContainers {
    fn push(&mut self, object: bool) {
        if self.depth < 64 {
            self.shallow = self.shallow & !(1 << self.depth) | u64::from(object) << self.depth;
        } else {
            self.deep.push(object);
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
        if self.depth >= 64 {
            self.deep.pop();
        }
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn innermost(&self) -> Option<bool> {
        match self.depth {
            0 => None,
            d if d <= 64 => Some(self.shallow >> (d - 1) & 1 == 1),
            _ => self.deep.last().copied(),
        }
    }
}

/// Whether `text` is one RFC 8259 JSON value and nothing else.
pub fn is_valid(text: &str) -> bool {
    let mut scanner = Scanner::new(text);
    scanner.skip_value().and_then(|_| scanner.end()).is_ok()
}

/// The run of ASCII digits at `bytes[start..]`: its length, and its value when it has at most
/// 19 digits (which always fit a `u64`; past that the value is meaningless). Eight bytes are
/// tested and converted at a time, as one word (SWAR), where eight are left to read. Always
/// inlined: with [`Scanner::number`] inlined into its callers, the compiler made a call of it.
#[inline(always)]
pub(crate) fn digit_run(bytes: &[u8], start: usize) -> (usize, u64) {
    let mut i = start;
    let mut value = 0u64;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let run = leading_digits(word);
        if run > 0 {
            // The run's digits moved to the word's end, behind zero bytes: leading zeros.
            let digits = word << (8 * (8 - run));
            value = value
                .wrapping_mul(POW10[run])
                .wrapping_add(eight_digits(digits));
            i += run;
        }
        if run < 8 {
            return (i - start, value);
        }
    }
    while let Some(&b) = bytes.get(i) {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        i += 1;
    }
    (i - start, value)
}

/// The value of `digits` when every byte is an ASCII digit and there are 1 to 19 of them.
#[inline]
pub(crate) fn short_decimal(digits: &[u8]) -> Option<u64> {
    let len = digits.len();
    if len == 0 || len > 19 {
        return None;
    }
    if len < 8 {
        // Shorter than a word: gathered into one, the bytes past the digits read as `0`s.
        let word = short_word(digits);
        if leading_digits(word | ZEROS << (8 * len)) < 8 {
            return None;
        }
        return Some(eight_digits(word << (8 * (8 - len))));
    }
    let word = |at: usize| u64::from_le_bytes(digits[at..at + 8].try_into().expect("eight"));
    let mut value = 0u64;
    let mut i = 0;
    while i + 8 <= len {
        let eight = word(i);
        if leading_digits(eight) < 8 {
            return None;
        }
        value = value * 100_000_000 + eight_digits(eight);
        i += 8;
    }
    let rest = len - i;
    if rest > 0 {
        // The last eight bytes, the ones already read masked off (as leading zeros).
        let tail = word(len - 8) & (u64::MAX << (8 * (8 - rest)));
        if leading_digits(tail | ZEROS >> (8 * rest)) < 8 {
            return None;
        }
        value = value * POW10[rest] + eight_digits(tail);
    }
    Some(value)
}

/// The 1 to 7 bytes of `bytes` in one word, the first in its lowest byte, zero bytes above:
/// two overlapping reads, whose common bytes are the same, or-ed together (a copy of a
/// variable length would be a call).
#[inline]
fn short_word(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    debug_assert!((1..8).contains(&n));
    let four = |at: usize| u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")));
    let two = |at: usize| u64::from(u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2")));
    match n {
        4.. => four(0) | four(n - 4) << (8 * (n - 4)),
        2.. => two(0) | two(n - 2) << (8 * (n - 2)),
        _ => u64::from(bytes[0]),
    }
}

/// Eight ASCII `0`s as a word.
const ZEROS: u64 = u64::from_ne_bytes([b'0'; 8]);

const POW10: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of a word's bytes, from its lowest, are ASCII digits (0 to 8).
#[inline]
fn leading_digits(word: u64) -> usize {
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Added to a byte's digit value, sets its high bit exactly when the value is above 9.
    const PAST_NINE: u64 = u64::from_ne_bytes([0x76; 8]);
    // A byte below `0` borrows from the bytes after it and one above `9` carries into the
    // next: either only disturbs later bytes, so the lowest flag is the first non-digit.
    let values = word.wrapping_sub(ZEROS);
    let flags = (values | values.wrapping_add(PAST_NINE)) & HIGH;
    (flags.trailing_zeros() / 8) as usize
}

/// The value of eight ASCII digits in a word, the first in its lowest byte (zero bytes count
/// as zeros): pairs, then fours, then all eight are combined by one multiply each.
#[inline]
fn eight_digits(word: u64) -> u64 {
    let pairs = ((word & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(10 << 8 | 1)) >> 8;
    let fours = ((pairs & 0x00FF_00FF_00FF_00FF).wrapping_mul(100 << 16 | 1)) >> 16;
    ((fours & 0x0000_FFFF_0000_FFFF).wrapping_mul(10_000 << 32 | 1)) >> 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_literals_carry_their_value_when_it_fits_an_i64() {
        let value_of = |text: &str| match Scanner::new(text).value() {
            Ok(Value::Number { value, .. }) => value,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(value_of("0"), Some(0));
        assert_eq!(value_of("-0"), Some(0));
        assert_eq!(value_of("1700000054841"), Some(1_700_000_054_841));
        assert_eq!(value_of("9223372036854775807"), Some(i64::MAX));
        assert_eq!(value_of("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(value_of("9223372036854775808"), None);
        assert_eq!(value_of("-9223372036854775809"), None);
        assert_eq!(value_of("18446744073709551616"), None);
        assert_eq!(value_of("12.0"), None);
        assert_eq!(value_of("1e3"), None);
    }

    #[test]
    fn digit_runs_have_their_length_and_value_at_every_length_and_boundary() {
        // Stop bytes next to the digits' range, and bytes that would borrow or carry.
        let stops = [b'/', b':', b'.', b'"', 0x00, 0x7F, 0x80, 0xFF];
        let digits = b"9876543210123456789012345";
        for len in 0..=digits.len() {
            for &stop in &stops {
                for tail in [0, 1, 7, 8, 20] {
                    for lead in [0, 3] {
                        let mut bytes = vec![b'x'; lead];
                        bytes.extend_from_slice(&digits[..len]);
                        bytes.push(stop);
                        bytes.extend(std::iter::repeat_n(b'5', tail));
                        let (run, value) = digit_run(&bytes, lead);
                        assert_eq!(run, len, "{:?}", String::from_utf8_lossy(&bytes));
                        if len <= 19 {
                            let expected: u64 = std::str::from_utf8(&digits[..len])
                                .unwrap()
                                .parse()
                                .unwrap_or(0);
                            assert_eq!(value, expected, "{len} digits");
                        }
                    }
                }
            }
            // The run at the very end of the bytes.
            assert_eq!(digit_run(&digits[..len], 0).0, len);
        }
        assert_eq!(digit_run(b"0000000000000000042x", 0), (19, 42));
        for len in 0..=21 {
            let text = &digits[digits.len() - len..];
            let expected = (1..=19)
                .contains(&len)
                .then(|| std::str::from_utf8(text).unwrap().parse::<u64>().unwrap());
            assert_eq!(short_decimal(text), expected, "{len} digits");
            // One byte that is not a digit, at every place.
            for at in 0..len {
                for &stop in &stops {
                    let mut bad = text.to_vec();
                    bad[at] = stop;
                    assert_eq!(short_decimal(&bad), None, "{bad:?}");
                }
            }
        }
        assert_eq!(digit_run(b"18446744073709551615", 0).0, 20);
    }

    #[test]
    fn accepts_what_rfc_8259_accepts() {
        for text in [
            "{}",
            " {\"a\" : [1, -0.5e+3, true, false, null, {\"b\": []}], \"c\": \"\\u00e9\\ud83d\\ude00\"} ",
            "[]",
            "[[[]]]",
            "\"x\"",
            "0",
            "-12.5E-3",
            "{\"a\":{\"b\":{\"c\":[{}]}}}",
        ] {
            assert!(is_valid(text), "{text}");
        }
    }

    #[test]
    fn refuses_what_it_does_not() {
        for text in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1,]",
            "[,1]",
            "{,}",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "NaN",
            "tru",
            "\"a\tb\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\\ud800\"",
            "\"\\ud800\\u0041\"",
            "{} x",
            "[\"a\" /*c*/]",
            "{'a':1}",
            "[",
            "[1",
            "{\"a\":",
        ] {
            assert!(!is_valid(text), "{text:?}");
        }
    }

    /// The keys of an object walked with `next_key`, or the first error.
    fn keys(text: &str) -> std::result::Result<Vec<String>, SyntaxError> {
        let mut s = Scanner::new(text);
        s.begin_object()?;
        let mut keys = Vec::new();
        while let Some(key) = s.next_key()? {
            keys.push(key.into_owned());
            s.skip_value()?;
        }
        s.end()?;
        Ok(keys)
    }

    /// Compact entries take a shorter path than spaced ones: both read the same keys, and
    /// refuse the same mistakes with the same error at the same place.
    #[test]
    fn compact_and_spaced_entries_read_and_fail_alike() {
        let expected = ["a", "b", "c\u{e9}"];
        for text in [
            r#"{"a":1,"b":[2],"c\u00e9":"x"}"#,
            r#"{ "a" : 1 , "b" : [2] , "c\u00e9" : "x" }"#,
            "{\"a\":1,\n\"b\":[2]\t,\"c\\u00e9\"\r\n:\"x\"}",
        ] {
            assert_eq!(keys(text).unwrap(), expected, "{text}");
        }
        for (text, at, what) in [
            (r#"{"a":1,"b"x}"#, 10, "expected `:` after a key"),
            (r#"{"a":1,"b" x}"#, 11, "expected `:` after a key"),
            (r#"{"a":1,"b""#, 10, "expected `:` after a key"),
            (r#"{"a":1,"b"#, 9, "EOF while parsing a string"),
            (r#"{"a":1,x}"#, 7, "expected a key after a comma"),
            (r#"{"a":1, }"#, 8, "expected a key after a comma"),
            (r#"{"a":1,,"b":2}"#, 7, "expected a key after a comma"),
        ] {
            let error = keys(text).unwrap_err();
            assert_eq!((error.at, error.what), (at, what), "{text}");
        }
    }

    #[test]
    fn walks_an_object_borrowing_plain_strings() {
        let mut s = Scanner::new(r#"{"a":"x","b\n":"y\u00e9","c":{"d":[1]},"e":12,"f":1.5}"#);
        s.begin_object().unwrap();
        let mut seen = Vec::new();
        while let Some(key) = s.next_key().unwrap() {
            seen.push((key, s.value().unwrap()));
        }
        s.end().unwrap();
        assert!(matches!(seen[0].1, Value::String(Cow::Borrowed("x"))));
        assert_eq!(seen[1].0, "b\n");
        assert_eq!(seen[1].1, Value::String(Cow::Owned("yé".into())));
        assert_eq!(seen[2].1, Value::Object(r#"{"d":[1]}"#));
        assert_eq!(
            seen[3].1,
            Value::Number {
                text: "12",
                integer: true,
                value: Some(12)
            }
        );
        assert_eq!(
            seen[4].1,
            Value::Number {
                text: "1.5",
                integer: false,
                value: None
            }
        );
    }

    #[test]
    fn escaped_strings_of_any_length_decode_whole() {
        for plain in [0, 1, 15, 16, 255, 256, 257, 1000] {
            for escapes in [1, 2, 300] {
                let raw = format!(
                    "{}{}{}",
                    "é".repeat(plain),
                    r#"\n\"\u00e9"#.repeat(escapes),
                    "x".repeat(plain)
                );
                let expected = format!(
                    "{}{}{}",
                    "é".repeat(plain),
                    "\n\"é".repeat(escapes),
                    "x".repeat(plain)
                );
                let text = format!("\"{raw}\",1");
                let mut scanner = Scanner::new(&text);
                assert_eq!(
                    scanner.value().unwrap(),
                    Value::String(Cow::Owned(expected))
                );
                assert_eq!(scanner.pos, raw.len() + 2, "the cursor is past the string");
            }
        }
    }

    #[test]
    fn plain_runs_stop_at_the_first_quote_backslash_or_control_character() {
        let fillers = ["a", "é", " ", "~", "\u{7f}", "中"];
        let stops = ['"', '\\', '\u{0}', '\u{1f}', '\n'];
        for len in 0..24 {
            for filler in fillers {
                for stop in stops {
                    for tail in ["", "xyz", "\"\"\"\"\"\"\"\""] {
                        let text = format!("{}{stop}{tail}", filler.repeat(len));
                        let mut scanner = Scanner::new(&text);
                        scanner.plain_run();
                        assert_eq!(scanner.pos, filler.len() * len, "{text:?}");
                    }
                }
                let text = filler.repeat(len);
                let mut scanner = Scanner::new(&text);
                scanner.plain_run();
                assert_eq!(scanner.pos, text.len());
            }
        }
    }

    #[test]
    fn an_object_inside_a_walk_is_read_whole_and_the_walk_goes_on() {
        let mut s = Scanner::new(r#"{"a":{"x":1,"y":[2,{"z":3}]},"b":true}"#);
        s.begin_object().unwrap();
        assert_eq!(s.next_key().unwrap().unwrap(), "a");
        let mut inner = Vec::new();
        s.object_entries(&mut inner).unwrap();
        assert_eq!(inner.len(), 2);
        assert_eq!(inner[1].1, Value::Array(r#"[2,{"z":3}]"#));
        assert_eq!(s.next_key().unwrap().unwrap(), "b");
        assert_eq!(s.value().unwrap(), Value::Bool(true));
        assert_eq!(s.next_key().unwrap(), None);
        s.end().unwrap();
    }

    #[test]
    fn deep_nesting_is_skipped_without_recursion() {
        let deep = format!("{}1{}", "[{\"a\":".repeat(200_000), "}]".repeat(200_000));
        assert!(is_valid(&deep));
        assert!(!is_valid(&deep[..deep.len() - 1]));
    }
}
