//! Normalisers: the pluggable steps that remove what differs between two runs of the same prompt
//! without being a difference in the answer (volatile tokens, layout, terminal decoration).
//!
//! Every built-in returns `Cow::Borrowed` when it has nothing to change, so a chain over a 1 MB
//! answer that is already clean costs one scan per step and no copy.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// One normalisation step, applied to both answers before they are compared.
///
/// A normaliser must be deterministic and must not depend on which leg the text came from: the
/// comparison is only fair if both sides go through exactly the same chain.
pub trait Normaliser: Send + Sync {
    /// A short stable name, for logs and for `Comparator`'s `Debug` output.
    fn name(&self) -> &'static str;

    /// The normalised text. Return `Cow::Borrowed(s)` (or a sub-slice of it) when nothing changes,
    /// so that clean input is not copied.
    fn apply<'a>(&self, s: &'a str) -> Cow<'a, str>;
}

/// Removes leading and trailing whitespace of the whole text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trim;

impl Normaliser for Trim {
    fn name(&self) -> &'static str {
        "trim"
    }

    fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(s.trim())
    }
}

/// Makes layout uniform: CRLF and lone CR become LF, runs of spaces and tabs become one space,
/// trailing spaces of each line go, and runs of blank lines become a single blank line.
///
/// Two CLIs (or one CLI headless and in a terminal pane) lay out the same answer with different
/// indentation and spacing; none of that is a difference a reader would call one.
#[derive(Debug, Clone, Copy, Default)]
pub struct CollapseWhitespace;

/// Whether a byte is horizontal whitespace for `CollapseWhitespace`. Vertical tab and form feed
/// are included because terminals and some CLIs emit them as plain spacing.
fn is_hspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c)
}

/// The lines of `s`, where "\r\n", "\n" and a lone "\r" each end a line. Like `str::split`, a
/// text ending in a line break yields a final empty line.
fn logical_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(r)
            }
            Some(i) => {
                let skip = if r[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&r[i + skip..]);
                Some(&r[..i])
            }
        }
    })
}

impl Normaliser for CollapseWhitespace {
    fn name(&self) -> &'static str {
        "collapse-whitespace"
    }

    fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
        // The output is built unconditionally and dropped if it equals the input: one copy of
        // the text is cheap next to the diff, and a single code path cannot disagree with a
        // separate "would anything change" scan.
        let mut out = String::with_capacity(s.len());
        let mut previous_blank = false;
        for (i, line) in logical_lines(s).enumerate() {
            let collapsed = collapse_line(line);
            let blank = collapsed.is_empty();
            if blank && previous_blank {
                continue;
            }
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&collapsed);
            previous_blank = blank;
        }
        if out == s {
            Cow::Borrowed(s)
        } else {
            Cow::Owned(out)
        }
    }
}

/// One line with its runs of horizontal whitespace collapsed and its trailing whitespace removed.
fn collapse_line(line: &str) -> Cow<'_, str> {
    let bytes = line.as_bytes();
    let clean = !bytes.windows(2).any(|w| is_hspace(w[0]) && is_hspace(w[1]))
        && !bytes.iter().any(|&b| b != b' ' && is_hspace(b))
        && !bytes.last().is_some_and(|&b| is_hspace(b));
    if clean {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut in_space = false;
    for c in line.chars() {
        if c.is_ascii() && is_hspace(c as u8) {
            in_space = true;
        } else {
            if in_space {
                out.push(' ');
                in_space = false;
            }
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Replaces ISO 8601 / RFC 3339 date-times with `<ts>`: `2026-11-25T19:22:20.778Z`,
/// `2026-11-25 19:22:20`, `2026-11-25T19:22:20+01:00`, `2026-11-25T19:22`, `... UTC`.
///
/// A bare date (`2026-11-25`) is left alone: it is usually content ("the release of 2026-11-25"),
/// while a time of day in an answer is almost always the moment the CLI ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct StripTimestamps;

static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    // ASCII word boundaries keep the regex on the lazy DFA for non-ASCII text too.
    Regex::new(
        r"(?-u:\b)\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?(?: ?(?:UTC|GMT))?(?-u:\b)?",
    )
    .expect("the timestamp pattern is valid")
});

impl Normaliser for StripTimestamps {
    fn name(&self) -> &'static str {
        "strip-timestamps"
    }

    fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
        TIMESTAMP.replace_all(s, "<ts>")
    }
}

/// Replaces elapsed-time figures with `<duration>`: "completed in 3.2s", "took 120ms",
/// "in 1.5 seconds", "elapsed: 2m 3s", "(2.3 s)".
///
/// Only figures in such a context are replaced (after `in`, `took`, `after`, `elapsed`,
/// `duration`, `time`, `taking`, `lasted`, or alone in parentheses). A bare "5 s" elsewhere may be
/// content, and the two runs of a prompt report their timings in these shapes.
#[derive(Debug, Clone, Copy, Default)]
pub struct StripDurations;

static DURATION: LazyLock<Regex> = LazyLock::new(|| {
    // Units are lower-case only, so "in 5M rows" is not taken for minutes; the keywords are
    // case-insensitive because they start sentences ("Took 3s").
    let num = r"\d+(?:[.,]\d+)?";
    let unit = r"(?:milliseconds?|msecs?|ms|microseconds?|µs|us|nanoseconds?|ns|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)";
    let dur = format!(r"{num} ?{unit}(?: ?{num} ?{unit})*(?-u:\b)");
    Regex::new(&format!(
        r"(?P<kw>(?-u:\b)(?i:in|took|after|elapsed|duration|time|taking|lasted)(?::? ?|\s+)){dur}|\(\s*{dur}\s*\)"
    ))
    .expect("the duration pattern is valid")
});

impl Normaliser for StripDurations {
    fn name(&self) -> &'static str {
        "strip-durations"
    }

    fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
        DURATION.replace_all(s, |caps: &Captures<'_>| match caps.name("kw") {
            Some(kw) => format!("{}<duration>", kw.as_str()),
            None => "(<duration>)".to_owned(),
        })
    }
}

/// Removes ANSI escape sequences (colours, cursor movement, OSC titles and hyperlinks).
///
/// They are never part of an answer, but a terminal pane captured with its attributes carries
/// them, so they would otherwise make every styled word a difference.
#[derive(Debug, Clone, Copy, Default)]
pub struct StripAnsi;

impl Normaliser for StripAnsi {
    fn name(&self) -> &'static str {
        "strip-ansi"
    }

    fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
        if !s.contains('\x1b') {
            return Cow::Borrowed(s);
        }
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\x1b' {
                out.push(c);
                continue;
            }
            match chars.peek().copied() {
                // CSI: parameters and intermediates, then one final byte in '@'..='~'.
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ST (ESC \).
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // Any other escape: intermediate bytes (' '..='/'), then one final byte. This
                // covers charset selection ("ESC ( B") as well as two-byte ones ("ESC =").
                Some(_) => {
                    for c in chars.by_ref() {
                        if !(' '..='/').contains(&c) {
                            break;
                        }
                    }
                }
                None => {}
            }
        }
        Cow::Owned(out)
    }
}

/// Removes what a terminal UI draws around an answer: box-drawing and block characters
/// (`│ ╭ ╰ ─ ▌`), and prompt or bullet markers at the start of a line (`>`, `❯`, `›`, `●`, `⏺`,
/// `⎿`). Lines that were nothing but a frame (`╭────╮`) disappear; the rest lose their
/// indentation and trailing spaces.
///
/// The tmux leg's answer is read from a pane, the headless leg's from JSON, so without this step
/// every answer would differ by its frame. It is not in the default chain because a headless
/// answer may itself contain a drawn tree or a quote; use `Comparator::terminal()` to get it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StripTuiDecorations;

/// Box drawing (U+2500–U+257F) and block elements (U+2580–U+259F).
fn is_frame_char(c: char) -> bool {
    ('\u{2500}'..='\u{259F}').contains(&c)
}

/// Vertical frame pieces: a line made of these and spaces is an empty row inside a box, which is
/// a blank line of the answer, not a frame.
fn is_vertical_frame_char(c: char) -> bool {
    matches!(c, '│' | '┃' | '║' | '▌' | '▐' | '┆' | '┇' | '┊' | '┋')
}

/// The glyphs the four TUIs put before a prompt, an answer or a tool's output: Claude Code's
/// `❯ ● ⏺ ⎿`, Codex's `› •`, Gemini's `> ✦`, Droid's `>`.
fn is_prompt_marker(c: char) -> bool {
    matches!(c, '>' | '❯' | '›' | '●' | '⏺' | '⎿' | '•' | '✦')
}

fn line_has_decoration(line: &str) -> bool {
    line.trim_start().starts_with(is_prompt_marker)
        || line.chars().any(is_frame_char)
        || is_timing_note(line)
}

/// The note a TUI prints under a finished turn: Codex's `Worked for <1s • 9:54 PM`, Claude
/// Code's `✻ Cooked for 0s` (a glyph, a verb, "for", a duration). Not part of the answer.
fn is_timing_note(line: &str) -> bool {
    let t = line.trim();
    if t.starts_with("Worked for ") {
        return true;
    }
    let mut w = t.split_whitespace();
    match (w.next(), w.next(), w.next(), w.next(), w.next()) {
        (Some(g), Some(verb), Some("for"), Some(d), None) => {
            g.chars().count() == 1
                && !g.chars().all(char::is_alphanumeric)
                && verb.chars().all(char::is_alphabetic)
                && d.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || c == '<')
        }
        _ => false,
    }
}

impl Normaliser for StripTuiDecorations {
    fn name(&self) -> &'static str {
        "strip-tui-decorations"
    }

    fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
        // Indentation is pane layout too (a TUI indents the answer under its bullet), so a line
        // that starts with whitespace also needs work.
        let needs_work =
            |line: &str| line_has_decoration(line) || line.starts_with(char::is_whitespace);
        if !s.lines().any(needs_work) {
            return Cow::Borrowed(s);
        }
        let mut out = String::with_capacity(s.len());
        let mut first = true;
        for line in s.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if is_timing_note(line) {
                continue;
            }
            let cleaned: Cow<'_, str> = if line_has_decoration(line) {
                let only_frame = line.chars().all(|c| is_frame_char(c) || c.is_whitespace());
                if only_frame
                    && line
                        .chars()
                        .any(|c| is_frame_char(c) && !is_vertical_frame_char(c))
                {
                    // A border: not a line of the answer at all.
                    continue;
                }
                // Frame characters become spaces so that "│a│b│" keeps its words apart; the
                // whitespace normaliser later collapses what this leaves. The marker is looked
                // for after the frame is gone, since a TUI draws its prompt inside the box.
                let unframed: String = line
                    .chars()
                    .map(|c| if is_frame_char(c) { ' ' } else { c })
                    .collect();
                let rest = unframed.trim_start();
                let rest = match rest.chars().next().filter(|&c| is_prompt_marker(c)) {
                    Some(marker) => &rest[marker.len_utf8()..],
                    None => rest,
                };
                Cow::Owned(rest.trim().to_owned())
            } else {
                Cow::Borrowed(line.trim_start())
            };
            if !first {
                out.push('\n');
            }
            first = false;
            out.push_str(&cleaned);
        }
        Cow::Owned(out)
    }
}

/// The default chain: ANSI escapes, timestamps, durations, whitespace, trim, in that order.
///
/// Escapes go first because they can split a timestamp or a duration in two; whitespace goes after
/// the token replacements so that the spaces they leave are collapsed too.
pub fn standard_chain() -> Vec<Box<dyn Normaliser>> {
    vec![
        Box::new(StripAnsi),
        Box::new(StripTimestamps),
        Box::new(StripDurations),
        Box::new(CollapseWhitespace),
        Box::new(Trim),
    ]
}

/// The chain for an answer read from a terminal pane: the standard chain with
/// `StripTuiDecorations` after the escapes and before the whitespace steps.
pub fn terminal_chain() -> Vec<Box<dyn Normaliser>> {
    vec![
        Box::new(StripAnsi),
        Box::new(StripTuiDecorations),
        Box::new(StripTimestamps),
        Box::new(StripDurations),
        Box::new(CollapseWhitespace),
        Box::new(Trim),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(s: &str) -> String {
        CollapseWhitespace.apply(s).into_owned()
    }

    #[test]
    fn trim_borrows() {
        assert!(matches!(Trim.apply("  a b \n"), Cow::Borrowed("a b")));
    }

    #[test]
    fn whitespace_runs_tabs_and_trailing_spaces() {
        assert_eq!(ws("a  b\t\tc   \nd \t e"), "a b c\nd e");
        assert_eq!(ws("   indented"), " indented");
    }

    #[test]
    fn whitespace_line_endings() {
        assert_eq!(ws("a\r\nb\r\nc"), "a\nb\nc");
        assert_eq!(ws("a\rb"), "a\nb");
        assert_eq!(ws("a\r\n\r\n\r\nb"), "a\n\nb");
        assert_eq!(ws("a\r\n"), "a\n");
    }

    #[test]
    fn whitespace_blank_line_runs() {
        assert_eq!(ws("a\n\n\n\nb"), "a\n\nb");
        assert_eq!(ws("a\n  \n\t\n\nb"), "a\n\nb");
        assert_eq!(ws("a\n\nb"), "a\n\nb");
    }

    #[test]
    fn whitespace_clean_text_is_borrowed() {
        let clean = "one line\n\nanother line\nthird";
        assert!(matches!(CollapseWhitespace.apply(clean), Cow::Borrowed(_)));
        assert!(matches!(CollapseWhitespace.apply(""), Cow::Borrowed("")));
    }

    #[test]
    fn timestamps_of_several_shapes() {
        let cases = [
            ("at 2026-11-25T19:22:20.778Z done", "at <ts> done"),
            ("at 2026-11-25 19:22:20 done", "at <ts> done"),
            ("at 2026-11-25T19:22:20+01:00 done", "at <ts> done"),
            ("at 2026-11-25T19:22:20-0500 done", "at <ts> done"),
            ("at 2026-11-25t19:22:20z done", "at <ts> done"),
            ("at 2026-11-25T19:22 done", "at <ts> done"),
            ("at 2026-11-25 19:22:20,123 UTC done", "at <ts> done"),
            ("[2026-11-25T19:22:20.123456789Z]", "[<ts>]"),
        ];
        for (input, want) in cases {
            assert_eq!(StripTimestamps.apply(input), want, "{input}");
        }
    }

    #[test]
    fn bare_dates_and_versions_stay() {
        for input in ["released 2026-11-25.", "version 12026-11-25T1", "1.2.3"] {
            assert_eq!(StripTimestamps.apply(input), input);
        }
        assert!(matches!(StripTimestamps.apply("none"), Cow::Borrowed(_)));
    }

    #[test]
    fn durations_of_several_shapes() {
        let cases = [
            ("Build completed in 3.2s.", "Build completed in <duration>."),
            ("It took 120ms to run", "It took <duration> to run"),
            ("done in 1.5 seconds", "done in <duration>"),
            ("all tests passed (2.3 s)", "all tests passed (<duration>)"),
            ("Took 2m 30s overall", "Took <duration> overall"),
            ("Elapsed: 4.75 s", "Elapsed: <duration>"),
            ("finished after 3 minutes", "finished after <duration>"),
            ("ok (17ms)", "ok (<duration>)"),
            ("time 0,8s", "time <duration>"),
        ];
        for (input, want) in cases {
            assert_eq!(StripDurations.apply(input), want, "{input}");
        }
    }

    #[test]
    fn figures_that_are_not_durations_stay() {
        for input in [
            "in 3 steps",
            "in 5M rows",
            "in 2024",
            "wrote 5 s-expressions",
            "raise it by 5s",
        ] {
            assert_eq!(StripDurations.apply(input), input);
        }
    }

    #[test]
    fn ansi_sequences() {
        let s = "\x1b[1;32mgreen\x1b[0m and \x1b]8;;https://x\x07link\x1b]8;;\x1b\\ \x1b(Bdone";
        assert_eq!(StripAnsi.apply(s), "green and link done");
        assert!(matches!(StripAnsi.apply("plain"), Cow::Borrowed(_)));
        // A dangling escape at the end is dropped, not a panic.
        assert_eq!(StripAnsi.apply("x\x1b"), "x");
        assert_eq!(StripAnsi.apply("x\x1b["), "x");
    }

    #[test]
    fn tui_frames_and_markers() {
        let pane =
            "╭──────────╮\n│ > hello  │\n│          │\n│ world    │\n╰──────────╯\n● Done.\n  ⎿ ok";
        assert_eq!(StripTuiDecorations.apply(pane), "hello\n\nworld\nDone.\nok");
        // The answer decorations of the four real TUIs (captures in kokino-cli's
        // tests/captures/<cli>/tui-*.txt) all come down to the answer text.
        for pane in [
            "● FAKE_ANSWER: 0 earlier user turns\n\n✻ Cooked for 0s",
            "• FAKE_ANSWER: 0 earlier user turns\n  Worked for <1s • 9:54 PM",
            "✦ FAKE_ANSWER: 0 earlier user turns",
            "> FAKE_ANSWER: 0 earlier user turns",
        ] {
            let out = StripTuiDecorations.apply(pane);
            assert_eq!(out.trim(), "FAKE_ANSWER: 0 earlier user turns", "{pane:?}");
        }
        assert!(matches!(
            StripTuiDecorations.apply("no frame here\nat all"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn unicode_passes_through() {
        let s = "日本語  のテキスト\t—  ünïcödé";
        assert_eq!(ws(s), "日本語 のテキスト — ünïcödé");
        assert_eq!(StripTimestamps.apply(s), s);
        assert_eq!(StripDurations.apply("終わり in 3秒"), "終わり in 3秒");
        assert_eq!(StripDurations.apply("終わり in 3s"), "終わり in <duration>");
    }
}
