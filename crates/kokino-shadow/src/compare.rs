//! The comparison itself: normalise both answers, try an exact match, otherwise measure a
//! bounded-cost similarity and render a short diff.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use similar::{capture_diff_slices_deadline, group_diff_ops, Algorithm, DiffOp};

use crate::normalise::{standard_chain, terminal_chain, Normaliser};

/// The similarity at or above which two answers count as matching (the spec's 0.95).
pub const DEFAULT_THRESHOLD: f64 = 0.95;

/// Texts up to this many bytes on both sides are compared character by character; longer ones
/// line by line. The character comparison is a bit-parallel LCS, well under a millisecond at
/// 4 KB per side; the limit is about the meaning of the result more than its cost, since a
/// character ratio of two long texts says little that the line ratio does not.
pub const DEFAULT_CHAR_LIMIT: usize = 4 * 1024;

/// How long one comparison may spend diffing before it settles for what it has. Normalisation is
/// linear and not counted; the diff is what can go quadratic on pathological input.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(100);

/// The largest rendered diff, in bytes, including the truncation line.
pub const DEFAULT_DIFF_LIMIT: usize = 2 * 1024;

/// A line of the line-level diff longer than this is cut into words, so that one changed word
/// in a 1 MB single-line answer (minified JSON, a wrapped paragraph) does not make the whole
/// answer one unequal token.
const LONG_LINE: usize = 512;

/// A changed hunk is re-compared character by character when its bit-parallel LCS costs at most
/// this many word operations (`⌈shorter/64⌉ · longer`, about 5 ms); larger hunks are re-compared
/// token by token if both sides have as many tokens. 4 M is, for example, 64 KB against 64 KB of
/// ASCII, or 16 KB against 256 KB.
const REFINE_WORK: usize = 1 << 22;

/// A rendered diff line is cut after this many characters so one long line cannot fill the diff.
const DIFF_LINE_CHARS: usize = 160;

/// Lines of unchanged context around each change in the rendered diff.
const DIFF_CONTEXT: usize = 2;

/// How the similarity was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The normalised texts are identical.
    Exact,
    /// A diff of lines (long lines split into words), with changed hunks re-compared by
    /// character where that is cheap.
    Lines,
    /// The longest common subsequence of characters; used when both texts are short.
    Chars,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Exact => "exact",
            Method::Lines => "lines",
            Method::Chars => "chars",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on two answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// `similarity >= threshold` (always true for an exact match).
    pub matched: bool,
    /// In `0.0..=1.0`: twice the characters the two normalised texts have in common, over the
    /// characters of both. 1.0 only for an exact match.
    pub similarity: f64,
    /// A short unified-style diff of the normalised texts (what was compared), at most
    /// `DEFAULT_DIFF_LIMIT` bytes, ending in "… N more lines" when cut. Empty on an exact match.
    pub diff: String,
    /// The normalised texts are identical.
    pub exact: bool,
    pub method: Method,
    /// The time budget ran out: the similarity is then a lower bound (parts not examined count as
    /// different), and the verdict may differ on a less loaded machine.
    pub timed_out: bool,
}

/// Compares two answers through a chain of normalisers. Cheap to share: it holds no state
/// between calls, and `compare` takes `&self`.
pub struct Comparator {
    normalisers: Vec<Box<dyn Normaliser>>,
    threshold: f64,
    budget: Duration,
    char_limit: usize,
    diff_limit: usize,
}

impl Default for Comparator {
    /// The standard chain (`normalise::standard_chain`) and the default threshold.
    fn default() -> Self {
        Self::new(standard_chain())
    }
}

impl fmt::Debug for Comparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Comparator")
            .field("normalisers", &self.normaliser_names())
            .field("threshold", &self.threshold)
            .field("budget", &self.budget)
            .field("char_limit", &self.char_limit)
            .field("diff_limit", &self.diff_limit)
            .finish()
    }
}

impl Comparator {
    /// A comparator with exactly these normalisers, applied in order.
    pub fn new(normalisers: Vec<Box<dyn Normaliser>>) -> Self {
        Comparator {
            normalisers,
            threshold: DEFAULT_THRESHOLD,
            budget: DEFAULT_BUDGET,
            char_limit: DEFAULT_CHAR_LIMIT,
            diff_limit: DEFAULT_DIFF_LIMIT,
        }
    }

    /// The standard chain plus `StripTuiDecorations`, for comparing an answer read from a
    /// terminal pane (the tmux leg) with a headless one.
    pub fn terminal() -> Self {
        Self::new(terminal_chain())
    }

    /// Appends a normaliser to the chain. It runs after the existing ones, i.e. after whitespace
    /// has been collapsed in the standard chain; build the chain with `new` when order matters.
    pub fn with(mut self, normaliser: impl Normaliser + 'static) -> Self {
        self.normalisers.push(Box::new(normaliser));
        self
    }

    /// Sets the match threshold, clamped to `0.0..=1.0` (NaN means 1.0: only exact matches).
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = if threshold.is_nan() {
            1.0
        } else {
            threshold.clamp(0.0, 1.0)
        };
        self
    }

    /// Sets how long one comparison may spend diffing.
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Sets the size (bytes, both sides) up to which texts are compared character by character.
    pub fn with_char_limit(mut self, bytes: usize) -> Self {
        self.char_limit = bytes;
        self
    }

    /// Sets the largest rendered diff in bytes. A floor of 64 bytes keeps room for the
    /// truncation line.
    pub fn with_diff_limit(mut self, bytes: usize) -> Self {
        self.diff_limit = bytes.max(64);
        self
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    pub fn normaliser_names(&self) -> Vec<&'static str> {
        self.normalisers.iter().map(|n| n.name()).collect()
    }

    /// The text after every normaliser of the chain, as `compare` sees it.
    pub fn normalise<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut current = Cow::Borrowed(s);
        for normaliser in &self.normalisers {
            let next = match &current {
                Cow::Borrowed(text) => {
                    let out = normaliser.apply(text);
                    (!is_same(&out, text)).then_some(out)
                }
                // An owned intermediate must stay owned; only copy when the step changed it.
                Cow::Owned(text) => match normaliser.apply(text) {
                    Cow::Borrowed(out) if is_same(out, text) => None,
                    out => Some(Cow::Owned(out.into_owned())),
                },
            };
            if let Some(next) = next {
                current = next;
            }
        }
        current
    }

    /// Compares two answers.
    ///
    /// Both are normalised; identical results are an exact match (similarity 1.0). Otherwise the
    /// similarity is `2·common / total` characters: the exact LCS when both texts are within the
    /// character limit (method `chars`), else a Myers diff of lines, equal lines counting whole
    /// and replaced hunks re-compared by character (method `lines`). The line diff and the
    /// re-comparison stop at the time budget, after which the similarity is a lower bound and
    /// `timed_out` is set.
    ///
    /// Pure: no IO, and the only clock read is the budget's deadline.
    pub fn compare(&self, a: &str, b: &str) -> Comparison {
        let a = self.normalise(a);
        let b = self.normalise(b);
        if a == b {
            return Comparison {
                matched: true,
                similarity: 1.0,
                diff: String::new(),
                exact: true,
                method: Method::Exact,
                timed_out: false,
            };
        }
        let deadline = Instant::now() + self.budget;
        let a_tokens = Tokens::new(&a);
        let b_tokens = Tokens::new(&b);
        let line_ops = capture_diff_slices_deadline(
            Algorithm::Myers,
            &a_tokens.tokens,
            &b_tokens.tokens,
            Some(deadline),
        );
        let (method, similarity) = if a.len() <= self.char_limit && b.len() <= self.char_limit {
            let (matched, total) = char_matches(&a, &b);
            (Method::Chars, ratio(matched, total))
        } else {
            let matched = line_matches(&line_ops, &a_tokens, &b_tokens, deadline);
            let total = a.chars().count() + b.chars().count();
            (Method::Lines, ratio(matched, total))
        };
        let timed_out = Instant::now() > deadline;
        let diff = render_diff(line_ops, &a_tokens, &b_tokens, self.diff_limit);
        Comparison {
            matched: similarity >= self.threshold,
            similarity,
            diff,
            exact: false,
            method,
            timed_out,
        }
    }
}

/// Whether a normaliser's output is its input unchanged (the same bytes at the same place).
fn is_same(out: &str, input: &str) -> bool {
    out.len() == input.len() && out.as_ptr() == input.as_ptr()
}

/// `2·matched / total`, where `matched` counts characters common to both texts once.
fn ratio(matched: usize, total: usize) -> f64 {
    if total == 0 {
        1.0
    } else {
        // Two distinct texts never reach 1.0, whatever rounding does: 1.0 means "exact".
        (2.0 * matched as f64 / total as f64).min(1.0 - f64::EPSILON)
    }
}

/// Characters common to `a` and `b` (the length of their longest common subsequence) and the
/// characters of both.
fn char_matches(a: &str, b: &str) -> (usize, usize) {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    (lcs_len(&a, &b), a.len() + b.len())
}

/// The length of the longest common subsequence, computed bit-parallel (Crochemore et al. 2001,
/// as in Hyyrö's LCS papers): one machine word holds 64 cells of a dynamic-programming column,
/// so the cost is `len(b) · ⌈len(a)/64⌉` word operations instead of `len(a) · len(b)` cells.
/// With the shorter text as `a`, two 4 KB texts take about 260 000 word operations.
///
/// `2·lcs / (len(a) + len(b))` is the similarity that the insert/delete edit distance gives,
/// which is what a character diff reports: the LCS is exactly the characters a minimal diff
/// keeps.
fn lcs_len(a: &[char], b: &[char]) -> usize {
    let (a, b) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let m = a.len();
    if m == 0 {
        return 0;
    }
    let words = m.div_ceil(64);
    let masks = MatchMasks::new(a, words);
    // Bit i of `v` is 1 while row i of the current column has not gained a match; the LCS is
    // the number of zero bits at the end.
    let mut v = vec![u64::MAX; words];
    for &c in b {
        let Some(pm) = masks.get(c) else { continue };
        let mut carry = false;
        for (vw, &pw) in v.iter_mut().zip(pm) {
            let x = *vw;
            let (sum, c1) = x.overflowing_add(x & pw);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            carry = c1 || c2;
            *vw = sum | (x & !pw);
        }
    }
    let mut zeros = 0;
    for (i, &w) in v.iter().enumerate() {
        let bits = if i + 1 == words { m - 64 * i } else { 64 };
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        zeros += (!w & mask).count_ones() as usize;
    }
    zeros
}

/// For each character of a text, the bit set of the positions where it occurs, `words` words
/// long. ASCII characters live in a flat table, others in a small list, since answers are mostly
/// ASCII and the table makes the inner loop's look-up one index.
struct MatchMasks {
    words: usize,
    ascii: Vec<u64>,
    other: Vec<(char, Vec<u64>)>,
}

impl MatchMasks {
    fn new(text: &[char], words: usize) -> Self {
        let mut masks = MatchMasks {
            words,
            ascii: vec![0; 128 * words],
            other: Vec::new(),
        };
        for (i, &c) in text.iter().enumerate() {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            if c.is_ascii() {
                masks.ascii[c as usize * words + word] |= bit;
            } else {
                match masks.other.iter_mut().find(|(k, _)| *k == c) {
                    Some((_, m)) => m[word] |= bit,
                    None => {
                        let mut m = vec![0; words];
                        m[word] = bit;
                        masks.other.push((c, m));
                    }
                }
            }
        }
        // Sorted so that look-ups of non-ASCII characters are a binary search.
        masks.other.sort_unstable_by_key(|(c, _)| *c);
        masks
    }

    fn get(&self, c: char) -> Option<&[u64]> {
        if c.is_ascii() {
            let start = c as usize * self.words;
            Some(&self.ascii[start..start + self.words])
        } else {
            self.other
                .binary_search_by_key(&c, |(k, _)| *k)
                .ok()
                .map(|i| self.other[i].1.as_slice())
        }
    }
}

/// A text cut into the tokens of the line-level diff: lines with their line break, and lines
/// longer than `LONG_LINE` cut further after each space. The tokens are contiguous, so a run of
/// tokens is a slice of the text.
struct Tokens<'a> {
    text: &'a str,
    tokens: Vec<&'a str>,
    /// Byte offset of each token in `text`, plus `text.len()` at the end.
    offsets: Vec<usize>,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Self {
        let mut tokens = Vec::new();
        let mut offsets = Vec::new();
        let mut at = 0;
        for line in text.split_inclusive('\n') {
            if line.len() <= LONG_LINE {
                offsets.push(at);
                tokens.push(line);
                at += line.len();
            } else {
                for word in line.split_inclusive(' ') {
                    offsets.push(at);
                    tokens.push(word);
                    at += word.len();
                }
            }
        }
        offsets.push(at);
        Tokens {
            text,
            tokens,
            offsets,
        }
    }

    /// The text of tokens `start..start + len`.
    fn span(&self, start: usize, len: usize) -> &'a str {
        &self.text[self.offsets[start]..self.offsets[start + len]]
    }
}

/// Characters common to both texts along the token diff: every equal token counts whole, and a
/// replaced hunk is re-compared character by character when that is cheap, so one changed word
/// costs that word rather than its whole line. Work stops at the deadline; what was not examined
/// counts as different.
fn line_matches(ops: &[DiffOp], a: &Tokens<'_>, b: &Tokens<'_>, deadline: Instant) -> usize {
    let mut matched = 0;
    for op in ops {
        match *op {
            DiffOp::Equal { old_index, len, .. } => {
                matched += a.span(old_index, len).chars().count();
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                if Instant::now() > deadline {
                    continue;
                }
                let old = a.span(old_index, old_len);
                let new = b.span(new_index, new_len);
                if lcs_work(old, new) <= REFINE_WORK {
                    matched += char_matches(old, new).0;
                } else if old_len == new_len {
                    // A large hunk where every line changed a little (a prefix on each line, a
                    // renamed identifier everywhere): pair the lines in order and compare each
                    // pair. Two unrelated texts also end up here, which costs a few
                    // milliseconds per megabyte.
                    for i in 0..old_len {
                        if i % 256 == 0 && Instant::now() > deadline {
                            break;
                        }
                        let (x, y) = (a.tokens[old_index + i], b.tokens[new_index + i]);
                        if lcs_work(x, y) <= REFINE_WORK {
                            matched += char_matches(x, y).0;
                        }
                    }
                }
            }
            DiffOp::Delete { .. } | DiffOp::Insert { .. } => {}
        }
    }
    matched
}

/// The word operations `lcs_len` needs for two texts, estimated from their byte lengths (an
/// upper bound, since a character is at least one byte).
fn lcs_work(a: &str, b: &str) -> usize {
    let (short, long) = if a.len() <= b.len() {
        (a.len(), b.len())
    } else {
        (b.len(), a.len())
    };
    short.div_ceil(64).saturating_mul(long)
}

/// Writes diff lines until the byte limit, then only counts them.
struct DiffWriter {
    out: String,
    limit: usize,
    more: usize,
    full: bool,
}

impl DiffWriter {
    /// Room kept for the "… N more lines" line.
    const RESERVE: usize = 32;

    fn new(limit: usize) -> Self {
        DiffWriter {
            out: String::new(),
            limit,
            more: 0,
            full: false,
        }
    }

    fn push_line(&mut self, line: &str) {
        if self.full {
            self.more += 1;
            return;
        }
        if self.out.len() + line.len() + 1 + Self::RESERVE > self.limit {
            self.full = true;
            self.more += 1;
            return;
        }
        self.out.push_str(line);
        self.out.push('\n');
    }

    /// Writes every line of `text`, each behind `prefix` and cut to `DIFF_LINE_CHARS`.
    fn push_text(&mut self, prefix: char, text: &str) {
        if self.full {
            // Counting is all that is left; no need to look at the lines one by one.
            self.more += text.lines().count();
            return;
        }
        for line in text.lines() {
            let mut rendered = String::with_capacity(line.len().min(DIFF_LINE_CHARS * 4) + 4);
            rendered.push(prefix);
            match line.char_indices().nth(DIFF_LINE_CHARS) {
                Some((cut, _)) => {
                    rendered.push_str(&line[..cut]);
                    rendered.push('…');
                }
                None => rendered.push_str(line),
            }
            self.push_line(&rendered);
        }
    }

    fn finish(mut self) -> String {
        if self.more > 0 {
            let noun = if self.more == 1 { "line" } else { "lines" };
            self.out.push_str(&format!("… {} more {noun}", self.more));
        } else if self.out.ends_with('\n') {
            self.out.pop();
        }
        self.out
    }
}

/// Counts lines up to a byte offset, moving forward only, so the hunk headers of a whole diff
/// cost one pass over each text.
struct LineCounter<'a> {
    text: &'a str,
    at: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        LineCounter {
            text,
            at: 0,
            line: 1,
        }
    }

    /// The 1-based line number of byte `offset`.
    fn line_at(&mut self, offset: usize) -> usize {
        if offset > self.at {
            self.line += self.text.as_bytes()[self.at..offset]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.at = offset;
        }
        self.line
    }
}

/// A unified-style diff of the two token sequences: `@@ -line +line @@` per group of changes,
/// two tokens of context, `-`/`+`/` ` prefixes, cut at `limit` bytes with "… N more lines".
fn render_diff(ops: Vec<DiffOp>, a: &Tokens<'_>, b: &Tokens<'_>, limit: usize) -> String {
    let mut writer = DiffWriter::new(limit);
    let mut a_lines = LineCounter::new(a.text);
    let mut b_lines = LineCounter::new(b.text);
    for group in group_diff_ops(ops, DIFF_CONTEXT) {
        let Some(first) = group.first() else { continue };
        if !writer.full {
            let old_line = a_lines.line_at(a.offsets[first.old_range().start]);
            let new_line = b_lines.line_at(b.offsets[first.new_range().start]);
            writer.push_line(&format!("@@ -{old_line} +{new_line} @@"));
        }
        for op in group {
            let (old, new) = (op.old_range(), op.new_range());
            match op {
                DiffOp::Equal { .. } => writer.push_text(' ', a.span(old.start, old.len())),
                DiffOp::Delete { .. } => writer.push_text('-', a.span(old.start, old.len())),
                DiffOp::Insert { .. } => writer.push_text('+', b.span(new.start, new.len())),
                DiffOp::Replace { .. } => {
                    writer.push_text('-', a.span(old.start, old.len()));
                    writer.push_text('+', b.span(new.start, new.len()));
                }
            }
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook dynamic programme, to check the bit-parallel one against.
    fn lcs_naive(a: &[char], b: &[char]) -> usize {
        let mut row = vec![0usize; b.len() + 1];
        for &x in a {
            let mut diagonal = 0;
            for (j, &y) in b.iter().enumerate() {
                let above = row[j + 1];
                row[j + 1] = if x == y {
                    diagonal + 1
                } else {
                    above.max(row[j])
                };
                diagonal = above;
            }
        }
        row[b.len()]
    }

    #[test]
    fn bit_parallel_lcs_agrees_with_the_textbook() {
        // Small alphabets make long common subsequences; lengths around 64 and 128 exercise the
        // carry between words.
        let alphabet: Vec<char> = "abcé日 ".chars().collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..300 {
            let len_a = (next() % 200) as usize;
            let len_b = if round % 3 == 0 {
                len_a
            } else {
                (next() % 200) as usize
            };
            let a: Vec<char> = (0..len_a)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let b: Vec<char> = (0..len_b)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            assert_eq!(lcs_len(&a, &b), lcs_naive(&a, &b), "{a:?} {b:?}");
        }
        assert_eq!(lcs_len(&[], &['a']), 0);
        let long: Vec<char> = "x".repeat(1000).chars().collect();
        assert_eq!(lcs_len(&long, &long), 1000);
    }

    #[test]
    fn tokens_split_long_lines_into_words() {
        let long = format!("{}\nshort\n", "word ".repeat(200));
        let tokens = Tokens::new(&long);
        // 200 words, the line break left after the last space, and the short line.
        assert_eq!(tokens.tokens.len(), 202);
        assert_eq!(tokens.span(0, tokens.tokens.len()), long);
        assert_eq!(tokens.span(200, 2), "\nshort\n");
    }

    #[test]
    fn diff_headers_carry_line_numbers() {
        let a = "one\ntwo\nthree\nfour\nfive\nsix\nseven\n";
        let b = "one\ntwo\nthree\nfour\nFIVE\nsix\nseven\n";
        let c = Comparator::default().compare(a, b);
        assert_eq!(
            c.diff,
            "@@ -3 +3 @@\n three\n four\n-five\n+FIVE\n six\n seven"
        );
    }
}
