//! Helpers shared by the capture and robustness tests.

#![allow(dead_code)]

use std::path::PathBuf;

use kokino_cli::{ParsedOutcome, ProcessExit, RunContext, StreamEvent, StreamParser};
use kokino_core::CliType;

/// The captures folder: `KOKINO_CAPTURES_DIR` when set, else `shared/captures` next to the repo.
/// A missing folder is a test failure, never a silent pass: without it the parsers are untested.
pub fn captures_dir() -> PathBuf {
    let dir = match std::env::var_os("KOKINO_CAPTURES_DIR") {
        Some(d) => PathBuf::from(d),
        // A byte-for-byte copy of the project's shared `captures/` folder lives in the
        // repository, so the parser tests run wherever the repository is cloned; the
        // `vendored_captures_match_the_shared_ones` test keeps it identical to the original.
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/captures")),
    };
    assert!(
        dir.is_dir(),
        "captures folder not found at {} — set KOKINO_CAPTURES_DIR to the folder holding \
         claude/, codex/, gemini/, droid/ and README.md",
        dir.display()
    );
    dir
}

/// Every capture file as a path relative to the captures folder (`claude/claude-success.jsonl`),
/// sorted. The README is the index, not a capture.
pub fn capture_files() -> Vec<String> {
    let root = captures_dir();
    let mut files = Vec::new();
    for sub in std::fs::read_dir(&root).expect("read captures dir") {
        let sub = sub.expect("dir entry");
        if !sub.file_type().expect("file type").is_dir() {
            continue;
        }
        let sub_name = sub.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(sub.path()).expect("read capture subdir") {
            let f = f.expect("dir entry");
            if f.file_type().expect("file type").is_file() {
                files.push(format!("{sub_name}/{}", f.file_name().to_string_lossy()));
            }
        }
    }
    files.sort();
    files
}

pub fn read_capture(rel: &str) -> String {
    let path = captures_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The lines of a file exactly as a line reader hands them over: split on `\n`, without the
/// newline, and without the empty piece after a final newline.
pub fn lines_of(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
}

/// The CLI a capture belongs to, from its folder.
pub fn cli_of(rel: &str) -> CliType {
    match rel.split('/').next() {
        Some("claude") => CliType::ClaudeCode,
        Some("codex") => CliType::Codex,
        Some("gemini") => CliType::Gemini,
        Some("droid") => CliType::FactoryDroid,
        other => panic!("capture {rel} is in an unknown folder {other:?}"),
    }
}

/// Feeds lines to a fresh parser and finishes it.
pub fn run_parser<'a>(
    cli: CliType,
    lines: impl IntoIterator<Item = &'a str>,
    exit: ProcessExit,
    stderr_tail: &str,
) -> (Vec<StreamEvent>, ParsedOutcome) {
    let mut parser: Box<dyn StreamParser> = kokino_cli::parser_for(cli);
    let mut events = Vec::new();
    for line in lines {
        parser.feed_line(line, &mut events);
    }
    let outcome = parser.finish(exit, stderr_tail);
    (events, outcome)
}

/// Feeds a run's stdout lines, then its stderr line by line (as the executor does, through
/// [`StreamParser::stderr_line`]), to a fresh parser for a run in `ctx`, and finishes it with the
/// stderr as the tail. A capture does not record how the two streams interleaved; stderr's
/// events come after stdout's here.
pub fn run_parser_with_stderr<'a>(
    cli: CliType,
    ctx: RunContext,
    lines: impl IntoIterator<Item = &'a str>,
    stderr: &str,
    exit: ProcessExit,
) -> (Vec<StreamEvent>, ParsedOutcome) {
    let mut parser = kokino_cli::parser_for_run(cli, ctx);
    let mut events = Vec::new();
    for line in lines {
        parser.feed_line(line, &mut events);
    }
    for line in lines_of(stderr) {
        events.extend(parser.stderr_line(line));
    }
    let outcome = parser.finish(exit, stderr);
    (events, outcome)
}

/// The counters must agree with the events: every malformed line and every unknown event is both
/// reported and counted, exactly once.
pub fn assert_counters_match(events: &[StreamEvent], outcome: &ParsedOutcome, what: &str) {
    let malformed = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Malformed { .. }))
        .count() as u64;
    let unknown = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Unknown { .. }))
        .count() as u64;
    assert_eq!(
        outcome.malformed_lines, malformed,
        "{what}: malformed count"
    );
    assert_eq!(outcome.unknown_events, unknown, "{what}: unknown count");
}

/// Summaries are bounded whatever the input.
pub fn assert_summaries_bounded(events: &[StreamEvent], what: &str) {
    for e in events {
        match e {
            StreamEvent::ToolUse {
                name,
                input_summary,
            } => {
                assert!(name.chars().count() <= 200, "{what}: tool name too long");
                assert!(
                    input_summary.chars().count() <= 200,
                    "{what}: input summary too long"
                );
            }
            StreamEvent::ToolResult { summary, .. } => {
                assert!(
                    summary.chars().count() <= 200,
                    "{what}: result summary too long"
                );
            }
            _ => {}
        }
    }
}
