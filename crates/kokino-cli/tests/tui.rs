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

/// The first prompt of a new session: Claude Code 2.1 wrote the answer and `turn_duration`
/// before the prompt's own `user` entry (a real transcript, in the order it was written). The
/// turn still ends, with the answer, once the prompt's entry arrives; before that it does not.
#[test]
fn claude_first_turn_written_out_of_order_still_ends() {
    let text = read_capture("claude/claude-interactive-first-turn.jsonl");
    let lines = lines_of(&text);
    let prompt_at = lines
        .iter()
        .position(|l| l.contains("\"what is 2+2\""))
        .expect("the capture has the prompt's entry");
    let end_at = lines
        .iter()
        .position(|l| l.contains("\"turn_duration\""))
        .expect("the capture has a turn_duration entry");
    assert!(end_at < prompt_at, "the capture is the out-of-order one");
    let mut parser = ClaudeTranscript::default();
    let mut out = Vec::new();
    for line in &lines[..prompt_at] {
        parser.feed_line(line, &mut out);
    }
    assert!(!parser.prompt_seen());
    assert_eq!(parser.turn_end(), None);
    for line in &lines[prompt_at..] {
        parser.feed_line(line, &mut out);
    }
    assert!(parser.prompt_seen());
    let end = parser.turn_end().expect("the turn ended");
    assert_eq!(end.answer, "FAKE_ANSWER: 0 earlier user turns");
    assert_eq!(end.class, OutcomeClass::Success);
    assert_eq!(out.last(), Some(&StreamEvent::Final));
}

/// Entries written before the prompt's and dated before it belong to an earlier turn (written
/// late): they neither end this turn nor give its answer.
#[test]
fn claude_entries_dated_before_the_prompt_do_not_count() {
    let mut parser = ClaudeTranscript::default();
    let mut out = Vec::new();
    let lines = [
        r#"{"type":"assistant","timestamp":"2026-12-04T23:58:09.000Z","message":{"id":"old","content":[{"type":"text","text":"old answer"}]}}"#,
        r#"{"type":"system","subtype":"turn_duration","timestamp":"2026-12-04T23:58:09.100Z"}"#,
        r#"{"type":"user","timestamp":"2026-12-04T23:58:10.000Z","message":{"role":"user","content":"new prompt"}}"#,
    ];
    for l in lines {
        parser.feed_line(l, &mut out);
    }
    assert!(parser.prompt_seen());
    assert_eq!(parser.turn_end(), None);
    parser.feed_line(
        r#"{"type":"assistant","timestamp":"2026-12-04T23:58:10.500Z","message":{"id":"new","content":[{"type":"text","text":"new answer"}]}}"#,
        &mut out,
    );
    parser.feed_line(
        r#"{"type":"system","subtype":"turn_duration","timestamp":"2026-12-04T23:58:10.600Z"}"#,
        &mut out,
    );
    assert_eq!(
        parser.turn_end().map(|e| e.answer),
        Some("new answer".into())
    );
}

// ------------------------------------------------------------------ the real TUIs' screens

mod screens {
    use std::collections::BTreeMap;
    use std::path::Path;

    use kokino_cli::tui::{
        tui_for, CodexRollout, GeminiChat, SetupContext, StartupScreen, TranscriptParser,
    };
    use kokino_core::{CliType, OutcomeClass};

    use super::support::{lines_of, read_capture};

    fn screen(rel: &str) -> String {
        read_capture(rel)
    }

    fn first_run(cli: CliType, rel: &str) -> (&'static str, Vec<String>) {
        match tui_for(cli).read_startup_screen(&screen(rel)) {
            StartupScreen::FirstRun(a) => (a.name, a.keys),
            other => panic!("{rel}: not a first-run screen: {other:?}"),
        }
    }

    #[test]
    fn ready_screens_with_placeholders_are_ready() {
        for (cli, rel) in [
            (CliType::ClaudeCode, "claude/tui-ready.txt"),
            (CliType::ClaudeCode, "claude/tui-answer.txt"),
            (CliType::Codex, "codex/tui-ready.txt"),
            (CliType::Codex, "codex/tui-two-turns.txt"),
            (CliType::Gemini, "gemini/tui-ready.txt"),
            (CliType::Gemini, "gemini/tui-two-turns.txt"),
        ] {
            assert_eq!(
                tui_for(cli).read_startup_screen(&screen(rel)),
                StartupScreen::Ready,
                "{rel}"
            );
        }
    }

    #[test]
    fn the_echo_of_a_typed_prompt_is_not_a_prompt() {
        assert!(!tui_for(CliType::Codex).is_prompt_line("› what is 2+2"));
        assert!(!tui_for(CliType::Gemini).is_prompt_line(" > what is 2+2"));
        assert!(!tui_for(CliType::ClaudeCode).is_prompt_line("❯ what is 2+2"));
        assert!(tui_for(CliType::ClaudeCode).is_prompt_line("❯ Try \"fix lint errors\""));
    }

    /// Each first-run screen is answered by moving onto the right option: Claude's API-key
    /// question starts on "No (recommended)", so the answer is Up, then Enter.
    #[test]
    fn first_run_screens_choose_the_right_option() {
        assert_eq!(
            first_run(CliType::ClaudeCode, "claude/tui-trust.txt"),
            ("claude trust this folder", vec!["Enter".to_owned()])
        );
        assert_eq!(
            first_run(CliType::ClaudeCode, "claude/tui-apikey.txt"),
            (
                "claude use this API key",
                vec!["Up".to_owned(), "Enter".to_owned()]
            )
        );
        assert_eq!(
            first_run(CliType::Codex, "codex/tui-trust.txt"),
            ("codex trust this folder", vec!["Enter".to_owned()])
        );
        assert_eq!(
            first_run(CliType::Gemini, "gemini/tui-trust.txt"),
            ("trust this folder", vec!["Enter".to_owned()])
        );
    }

    #[test]
    fn droid_login_screen_is_an_auth_error_at_once() {
        match tui_for(CliType::FactoryDroid).read_startup_screen(&screen("droid/tui-login.txt")) {
            StartupScreen::Blocked { class, reason } => {
                assert_eq!(class, OutcomeClass::AuthError);
                assert!(reason.contains("Factory account"), "{reason}");
            }
            other => panic!("not blocked: {other:?}"),
        }
        assert_eq!(
            tui_for(CliType::FactoryDroid)
                .classify_exit_screen(&screen("droid/tui-invalid-factory-key.txt")),
            Some(OutcomeClass::AuthError)
        );
    }

    /// A menu no profile knows (here: Codex's trust question shown to the Gemini profile) fails
    /// at once instead of waiting for the startup timeout.
    #[test]
    fn unknown_menus_fail_fast() {
        match tui_for(CliType::Gemini).read_startup_screen(&screen("codex/tui-trust.txt")) {
            StartupScreen::Blocked { class, reason } => {
                assert_eq!(class, OutcomeClass::CliError);
                assert!(reason.contains("Trust and continue"), "{reason}");
            }
            other => panic!("not blocked: {other:?}"),
        }
    }

    fn lines(rel: &str) -> Vec<String> {
        screen(rel).lines().map(str::to_owned).collect()
    }

    #[test]
    fn answers_are_read_from_the_screens_without_decorations() {
        let codex = tui_for(CliType::Codex);
        let a = codex
            .extract_answer(&lines("codex/tui-two-turns.txt"), "USE_TOOL please")
            .unwrap();
        assert!(
            a.ends_with("FAKE_ANSWER: 1 earlier user turns, after tool: tool-ok"),
            "{a:?}"
        );
        let gemini = tui_for(CliType::Gemini);
        let a = gemini
            .extract_answer(&lines("gemini/tui-two-turns.txt"), "USE_TOOL please")
            .unwrap();
        assert!(
            a.ends_with("FAKE_ANSWER: 1 earlier user turns, after tool: tool-ok"),
            "{a:?}"
        );
        let claude = tui_for(CliType::ClaudeCode);
        assert_eq!(
            claude
                .extract_answer(&lines("claude/tui-answer.txt"), "what is 2+2")
                .as_deref(),
            Some("FAKE_ANSWER: 0 earlier user turns")
        );
    }

    fn feed(parser: &mut dyn TranscriptParser, rel: &str, upto: usize) {
        let text = read_capture(rel);
        let mut out = Vec::new();
        for l in lines_of(&text).into_iter().take(upto) {
            parser.feed_line(l, &mut out);
        }
    }

    #[test]
    fn codex_rollout_ends_each_turn_with_task_complete() {
        let text = read_capture("codex/tui-rollout.jsonl");
        let n = lines_of(&text).len();
        let first_end = lines_of(&text)
            .iter()
            .position(|l| l.contains("\"task_complete\""))
            .unwrap();
        let mut p = CodexRollout::default();
        feed(&mut p, "codex/tui-rollout.jsonl", first_end);
        assert!(p.prompt_seen());
        assert_eq!(p.turn_end(), None);
        let mut p = CodexRollout::default();
        feed(&mut p, "codex/tui-rollout.jsonl", first_end + 1);
        let end = p.turn_end().unwrap();
        assert_eq!(end.answer, "FAKE_ANSWER: 0 earlier user turns");
        assert_eq!(end.class, OutcomeClass::Success);
        assert_eq!(
            p.session_id().as_deref(),
            Some("01a2430c-7772-7252-a743-ec67afc8962c")
        );
        // The second turn, read from after the first one's end, like a follower does.
        let mut p = CodexRollout::default();
        let mut out = Vec::new();
        for l in lines_of(&text).into_iter().skip(first_end + 1).take(n) {
            p.feed_line(l, &mut out);
        }
        assert_eq!(
            p.turn_end().unwrap().answer,
            "FAKE_ANSWER: 1 earlier user turns, after tool: tool-ok"
        );
    }

    #[test]
    fn gemini_chat_ends_a_turn_with_the_answer_not_the_tool_call() {
        let text = read_capture("gemini/tui-chat.jsonl");
        let all = lines_of(&text);
        let mut p = GeminiChat::default();
        let mut out = Vec::new();
        let mut ends = Vec::new();
        for l in &all {
            p.feed_line(l, &mut out);
            if let Some(e) = p.turn_end() {
                ends.push(e.answer);
                p = GeminiChat::default();
            }
        }
        assert_eq!(
            ends,
            [
                "FAKE_ANSWER: 0 earlier user turns",
                "FAKE_ANSWER: 1 earlier user turns, after tool: tool-ok"
            ]
        );
        let mut first = GeminiChat::default();
        first.feed_line(all[0], &mut out);
        assert_eq!(
            first.session_id().as_deref(),
            Some("a9dc2bd4-91b9-447a-9392-c739c52adda4")
        );
    }

    /// A resumed Gemini TUI draws its prompt before its restored conversation, and what is typed
    /// in between is lost: the executor waits for an answer to be drawn. The other TUIs need no
    /// wait.
    #[test]
    fn a_resumed_gemini_is_ready_once_its_history_is_drawn() {
        let gemini = tui_for(CliType::Gemini);
        assert!(!gemini.resumed_history_shown(&screen("gemini/tui-ready.txt")));
        assert!(gemini.resumed_history_shown(&screen("gemini/tui-two-turns.txt")));
        assert!(tui_for(CliType::Codex).resumed_history_shown(""));
    }

    /// A resumed session's record repeats the earlier turns; read from its start by a reader
    /// for a turn that began after them, they are not taken for this turn's answer.
    #[test]
    fn gemini_chat_ignores_the_turns_before_its_own() {
        let text = read_capture("gemini/tui-chat.jsonl");
        // The capture's second prompt was typed at 22:01:03.027; this turn starts just before.
        let start = chrono::DateTime::parse_from_rfc3339("2026-12-04T22:01:00.000Z").unwrap();
        let mut p = GeminiChat::since(start.with_timezone(&chrono::Utc).into());
        let mut out = Vec::new();
        let mut answer = None;
        for l in lines_of(&text) {
            p.feed_line(l, &mut out);
            if let Some(e) = p.turn_end() {
                answer = Some(e.answer);
                break;
            }
        }
        assert_eq!(
            answer.as_deref(),
            Some("FAKE_ANSWER: 1 earlier user turns, after tool: tool-ok"),
            "the first turn's answer was taken for this one"
        );
    }

    fn merge(
        cli: CliType,
        file: &str,
        existing: Option<&str>,
        env: &BTreeMap<String, String>,
    ) -> Option<String> {
        let home = Path::new("/h");
        let cwd = Path::new("/w/proj");
        let ctx = SetupContext::new(home, cwd, env);
        let tui = tui_for(cli);
        let path = tui
            .config_files(&ctx)
            .into_iter()
            .find(|p| p.ends_with(file))
            .unwrap_or_else(|| panic!("{file} is not prepared"));
        tui.merge_config(&path, existing, &ctx).unwrap()
    }

    /// Claude's `~/.claude.json`: the three facts are added, and the operator's values stay.
    #[test]
    fn claude_config_is_merged_never_overwritten() {
        let env: BTreeMap<String, String> = [(
            "ANTHROPIC_API_KEY".to_owned(),
            "sk-standin-0123456789abcdefghijklmnop".to_owned(),
        )]
        .into();
        let fresh: serde_json::Value =
            serde_json::from_str(&merge(CliType::ClaudeCode, ".claude.json", None, &env).unwrap())
                .unwrap();
        assert_eq!(fresh["hasCompletedOnboarding"], true);
        assert_eq!(fresh["projects"]["/w/proj"]["hasTrustDialogAccepted"], true);
        assert_eq!(
            fresh["customApiKeyResponses"]["approved"],
            serde_json::json!(["6789abcdefghijklmnop"])
        );
        let operator = r#"{"theme":"dark","hasCompletedOnboarding":false,
            "projects":{"/w/proj":{"hasTrustDialogAccepted":false,"allowedTools":["Bash"]}},
            "customApiKeyResponses":{"approved":["other"],"rejected":["6789abcdefghijklmnop"]}}"#;
        // Everything is there, with the operator's values: nothing to write.
        assert_eq!(
            merge(CliType::ClaudeCode, ".claude.json", Some(operator), &env),
            None
        );
        let partial = r#"{"theme":"dark","projects":{"/other":{"x":1}}}"#;
        let merged: serde_json::Value = serde_json::from_str(
            &merge(CliType::ClaudeCode, ".claude.json", Some(partial), &env).unwrap(),
        )
        .unwrap();
        assert_eq!(merged["theme"], "dark");
        assert_eq!(merged["projects"]["/other"]["x"], 1);
        assert_eq!(
            merged["projects"]["/w/proj"]["hasTrustDialogAccepted"],
            true
        );
        // Once merged, merging again changes nothing.
        let again = merge(
            CliType::ClaudeCode,
            ".claude.json",
            Some(&merged.to_string()),
            &env,
        );
        assert_eq!(again, None);
    }

    #[test]
    fn codex_and_gemini_trust_is_added_once() {
        let env = BTreeMap::new();
        let cfg = "model = \"gpt-fake\"\n";
        let merged = merge(CliType::Codex, "config.toml", Some(cfg), &env).unwrap();
        assert!(merged.starts_with(cfg));
        assert!(merged.contains("[projects.\"/w/proj\"]\ntrust_level = \"trusted\"\n"));
        assert_eq!(
            merge(CliType::Codex, "config.toml", Some(&merged), &env),
            None
        );
        let distrusted = "[projects.\"/w/proj\"]\ntrust_level = \"untrusted\"\n";
        assert_eq!(
            merge(CliType::Codex, "config.toml", Some(distrusted), &env),
            None
        );

        let t = merge(CliType::Gemini, "trustedFolders.json", None, &env).unwrap();
        assert!(t.contains("\"/w/proj\": \"TRUST_FOLDER\""), "{t}");
        let own = r#"{"/w/proj":"DO_NOT_TRUST"}"#;
        assert_eq!(
            merge(CliType::Gemini, "trustedFolders.json", Some(own), &env),
            None
        );
        let p = merge(
            CliType::Gemini,
            "projects.json",
            Some(r#"{"projects":{"/x/proj":"proj"}}"#),
            &env,
        )
        .unwrap();
        assert!(p.contains("\"/w/proj\": \"proj-1\""), "{p}");
    }
}
