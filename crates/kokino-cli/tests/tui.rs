//! The interactive profiles (`kokino_cli::tui`) on the captures of the real CLIs.

mod support;

use kokino_cli::tui::{ClaudeTranscript, TranscriptParser};
use kokino_cli::StreamEvent;
use kokino_core::OutcomeClass;
use support::{lines_of, read_capture};

/// The real interactive transcript drives Claude's transcript parser to a finished turn with
/// the real answer, and the events it emits end with `Final`.
#[test]
fn claude_transcript_capture_reads_as_one_finished_turn() {
    let text = read_capture("claude/claude-interactive-transcript.jsonl");
    let mut parser = ClaudeTranscript::default();
    let mut out = Vec::new();
    for line in lines_of(&text) {
        parser.feed_line(line, &mut out);
    }
    assert!(parser.prompt_seen());
    let end = parser
        .turn_end()
        .expect("the capture holds a finished turn");
    assert_eq!(end.answer, "FAKE_ANSWER: 4");
    assert_eq!(end.class, OutcomeClass::Success);
    assert_eq!(end.error, None);
    assert_eq!(parser.malformed_lines(), 0);
    assert_eq!(out.last(), Some(&StreamEvent::Final));
    assert!(out.contains(&StreamEvent::AssistantText {
        text: "FAKE_ANSWER: 4".into(),
        partial: false
    }));
}

/// Fed only the lines up to (not including) the turn's end, the parser has the prompt but no
/// end: a transcript that is still being written never completes the turn early.
#[test]
fn claude_transcript_capture_cut_before_the_end_is_not_finished() {
    let text = read_capture("claude/claude-interactive-transcript.jsonl");
    let lines = lines_of(&text);
    let end_at = lines
        .iter()
        .position(|l| l.contains("\"turn_duration\""))
        .expect("the capture has a turn_duration entry");
    let mut parser = ClaudeTranscript::default();
    let mut out = Vec::new();
    for line in &lines[..end_at] {
        parser.feed_line(line, &mut out);
    }
    assert!(parser.prompt_seen());
    assert_eq!(parser.turn_end(), None);
    assert!(!out.contains(&StreamEvent::Final));
}
