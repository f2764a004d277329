//! What each CLI's TUI looks like: its prompt line, the first-run screens that block it, and
//! where the answer is on the screen.
//!
//! These patterns match `kokino-fake-agent`'s interactive mode (its README lists them) and what
//! is known of the real TUIs (guides/peer-systems.md §6.7: claude's input box, its `● ` answer
//! prefix, the "trust this folder" screen). Screen scraping is the fallback: for Claude Code the
//! executor reads the answer from the session transcript instead.

use kokino_core::CliType;

/// Whether `line` is the CLI's empty input prompt, i.e. the CLI is waiting for input.
///
/// Trailing spaces are ignored because `capture-pane` drops them; for claude a right-hand box
/// border is ignored too, because the real TUI draws the input inside a box (`│ >      │`).
pub(crate) fn is_prompt_line(cli: CliType, line: &str) -> bool {
    let t = line.trim();
    match cli {
        CliType::ClaudeCode => {
            let inner = t.strip_suffix('│').map(str::trim_end).unwrap_or(t);
            inner == "│ >" || inner == ">" || inner == "❯"
        }
        CliType::Codex => t == "›",
        CliType::Gemini | CliType::FactoryDroid => t == ">",
    }
}

/// The bytes the CLI prints when it draws a fresh prompt, used to notice a prompt in the output
/// stream without reading the screen, so the executor can check sooner than the quiescence delay.
pub(crate) fn prompt_output_suffix(cli: CliType) -> &'static [u8] {
    match cli {
        CliType::ClaudeCode => "│ > ".as_bytes(),
        CliType::Codex => "› ".as_bytes(),
        CliType::Gemini | CliType::FactoryDroid => b"> ",
    }
}

/// How many non-blank lines at the bottom of the screen may follow the prompt line (footers such
/// as claude's "? for shortcuts" or a box's bottom border).
const PROMPT_SEARCH_LINES: usize = 6;

/// The index of the prompt line if the screen shows the CLI waiting for input: a prompt line
/// among the last few non-blank lines.
pub(crate) fn find_prompt(cli: CliType, lines: &[String]) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, l)| !l.trim().is_empty())
        .take(PROMPT_SEARCH_LINES)
        .find(|(_, l)| is_prompt_line(cli, l))
        .map(|(i, _)| i)
}

/// A first-run screen the executor knows how to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FirstRunScreen {
    pub name: &'static str,
    /// Keys for `send-keys`, in order.
    pub keys: &'static [&'static str],
}

/// Recognises the screens real CLIs show before their first prompt. The answer is always the
/// default choice (the highlighted first option), which is "yes, trust/continue".
pub(crate) fn first_run_screen(screen: &str) -> Option<FirstRunScreen> {
    const SCREENS: &[(&str, FirstRunScreen)] = &[
        (
            "Do you trust the files in this folder?",
            FirstRunScreen {
                name: "trust this folder",
                keys: &["Enter"],
            },
        ),
        (
            "Press Enter to continue",
            FirstRunScreen {
                name: "press Enter to continue",
                keys: &["Enter"],
            },
        ),
    ];
    SCREENS
        .iter()
        .find(|(marker, _)| screen.contains(marker))
        .map(|(_, s)| *s)
}

/// Prefix the TUI puts before the answer text.
fn answer_prefix(cli: CliType) -> Option<&'static str> {
    match cli {
        CliType::ClaudeCode => Some("● "),
        _ => None,
    }
}

/// Extracts the answer from the pane text captured from the line where the prompt was pasted.
///
/// `lines[0..echo_lines]` are the echoed prompt (`capture-pane -J` joins wrapped lines, so one
/// prompt line is one captured line); the answer runs from there to the new prompt line. Returns
/// `None` while no new prompt has appeared below the echo, i.e. the CLI is still working.
pub(crate) fn extract_answer(cli: CliType, lines: &[String], echo_lines: usize) -> Option<String> {
    let prompt_at = find_prompt(cli, lines)?;
    if prompt_at < echo_lines {
        return None;
    }
    let mut body: Vec<&str> = lines[echo_lines..prompt_at]
        .iter()
        .map(|l| l.trim_end())
        .collect();
    while body.first().is_some_and(|l| l.is_empty()) {
        body.remove(0);
    }
    while body.last().is_some_and(|l| l.is_empty()) {
        body.pop();
    }
    if let (Some(prefix), Some(first)) = (answer_prefix(cli), body.first_mut()) {
        if let Some(rest) = first.strip_prefix(prefix) {
            *first = rest;
        }
    }
    Some(body.join("\n"))
}

/// How many captured lines the echo of `prompt` takes: one per line of the prompt.
pub(crate) fn echo_lines(prompt: &str) -> usize {
    prompt.split('\n').count().max(1)
}

/// A crude reading of a dead pane's last words, for the outcome class: the CLIs' own auth and
/// quota messages (the same ones their headless modes print).
pub(crate) fn classify_failure(screen: &str) -> Option<kokino_core::OutcomeClass> {
    let s = screen.to_ascii_lowercase();
    let auth = [
        "not logged in",
        "please run /login",
        "authentication failed",
        "401 unauthorized",
        "please set an auth method",
    ];
    let quota = ["429", "rate limit", "too many requests"];
    if auth.iter().any(|m| s.contains(m)) {
        Some(kokino_core::OutcomeClass::AuthError)
    } else if quota.iter().any(|m| s.contains(m)) {
        Some(kokino_core::OutcomeClass::RateLimited)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prompts() {
        assert!(is_prompt_line(CliType::ClaudeCode, "│ > "));
        assert!(is_prompt_line(
            CliType::ClaudeCode,
            "│ >                    │"
        ));
        assert!(!is_prompt_line(CliType::ClaudeCode, "│ > hello"));
        assert!(is_prompt_line(CliType::Codex, "›"));
        assert!(is_prompt_line(CliType::Gemini, "> "));
        assert!(!is_prompt_line(CliType::Gemini, ">_ OpenAI Codex"));
    }

    #[test]
    fn extracts_between_echo_and_prompt() {
        let screen = v(&["│ > hi", "there", "● echo: hi", "there", "│ >", "", ""]);
        assert_eq!(
            extract_answer(CliType::ClaudeCode, &screen, 2).as_deref(),
            Some("echo: hi\nthere")
        );
        let working = v(&["│ > hi", "there", "", ""]);
        assert_eq!(extract_answer(CliType::ClaudeCode, &working, 2), None);
        let codex = v(&["› a", "echo: a", "›"]);
        assert_eq!(
            extract_answer(CliType::Codex, &codex, 1).as_deref(),
            Some("echo: a")
        );
    }

    #[test]
    fn first_run() {
        assert_eq!(
            first_run_screen("│ Do you trust the files in this folder?\n❯ 1. Yes")
                .unwrap()
                .name,
            "trust this folder"
        );
        assert!(first_run_screen("│ >").is_none());
    }
}
