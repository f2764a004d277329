//! Behaviour tokens (`fake:NAME` or `fake:NAME=VALUE`) embedded in the prompt.
//!
//! Tests script the fake agent through the prompt because that is the one input every caller
//! (broker, benchmark, a human with a shell) already controls, whatever flags the adapter adds.

use std::time::Duration;

/// The behaviour requested by the prompt, plus the prompt text with the tokens removed.
/// What `fake:child` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    /// A grandchild in our process group, with its stdio on `/dev/null`.
    Group,
    /// The same, keeping our stdout and stderr open (`fake:child=inherit`).
    Inherit,
    /// A daemon (`fake:child=daemon`): double fork and `setsid`, so it is in neither our group
    /// nor our session and its parent is gone, like `codex app-server --managed-daemon`.
    Daemon,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Script {
    /// The prompt with every `fake:` token (and the whitespace after it) removed, trimmed.
    pub text: String,
    pub sleep: Duration,
    pub exit: Option<i32>,
    pub auth: bool,
    pub ratelimit: bool,
    /// `fake:ratelimit=retry`: the CLI's own retry loop after a 429 (its first retry signal,
    /// then more attempts forever) instead of its give-up output.
    pub ratelimit_retry: bool,
    /// `fake:turns`: the answer ends with `turns=<n>`, the number of earlier user turns the
    /// session holds, so that a test can see a resumed session kept its history.
    pub turns: bool,
    pub hang: bool,
    pub ignore_term: bool,
    /// The grandchild requested, if any.
    pub child: Option<ChildKind>,
    pub malformed: bool,
    pub noresult: bool,
    pub big: Option<usize>,
    pub mem: Option<usize>,
    pub tool: bool,
    pub stream: Option<usize>,
    /// `fake:flood=SIZE`: SIZE bytes of tool output, as 1 MiB `tool_result` lines, before the
    /// answer. Used to show that the broker's memory does not grow with a CLI's output.
    pub flood: Option<usize>,
    /// `fake:mode-suffix`: the answer ends with ` (headless)` or ` (interactive)`, so that a
    /// shadow comparison of the two legs sees a small difference.
    pub mode_suffix: bool,
    /// `fake:headless-fail`: a headless run fails (exit 1 after an error result) while an
    /// interactive one answers, so that a shadow run has one failed leg.
    pub headless_fail: bool,
    /// Tokens we did not understand; reported on stderr so a typo in a test is easy to spot.
    pub warnings: Vec<String>,
}

impl Script {
    /// Splits a prompt into its behaviour tokens and the text that is echoed back.
    pub fn parse(prompt: &str) -> Script {
        let mut script = Script::default();
        let mut text = String::with_capacity(prompt.len());
        let mut rest = prompt;
        let mut at_word_start = true;
        while !rest.is_empty() {
            if at_word_start && rest.starts_with("fake:") {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                script.apply(&rest[5..end]);
                // Dropping the whitespace after the token keeps "a fake:x b" as "a b".
                let after = &rest[end..];
                rest = after.trim_start();
                continue;
            }
            let Some(c) = rest.chars().next() else { break };
            text.push(c);
            at_word_start = c.is_whitespace();
            rest = &rest[c.len_utf8()..];
        }
        script.text = text.trim().to_owned();
        script
    }

    fn apply(&mut self, token: &str) {
        let (name, value) = match token.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (token, None),
        };
        match (name, value) {
            ("sleep", Some(v)) => match v.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => self.sleep = Duration::from_secs_f64(s),
                _ => self.warn(token),
            },
            ("exit", Some(v)) => match v.parse::<i32>() {
                Ok(code) => self.exit = Some(code),
                Err(_) => self.warn(token),
            },
            ("auth", None) => self.auth = true,
            ("ratelimit", None) => self.ratelimit = true,
            ("ratelimit", Some("retry")) => {
                self.ratelimit = true;
                self.ratelimit_retry = true;
            }
            ("turns", None) => self.turns = true,
            ("hang", None) => self.hang = true,
            ("ignore-term", None) => self.ignore_term = true,
            ("child", None) => self.child = Some(ChildKind::Group),
            ("child", Some("inherit")) => self.child = Some(ChildKind::Inherit),
            ("child", Some("daemon")) => self.child = Some(ChildKind::Daemon),
            ("malformed", None) => self.malformed = true,
            ("noresult", None) => self.noresult = true,
            ("mode-suffix", None) => self.mode_suffix = true,
            ("headless-fail", None) => self.headless_fail = true,
            ("flood", Some(v)) => match parse_size(v) {
                Some(n) => self.flood = Some(n),
                None => self.warn(token),
            },
            ("big", Some(v)) => match parse_size(v) {
                Some(n) => self.big = Some(n),
                None => self.warn(token),
            },
            ("mem", Some(v)) => match parse_size(v) {
                Some(n) => self.mem = Some(n),
                None => self.warn(token),
            },
            ("tool", None) => self.tool = true,
            ("stream", Some(v)) => match v.parse::<usize>() {
                Ok(n) => self.stream = Some(n),
                Err(_) => self.warn(token),
            },
            _ => self.warn(token),
        }
    }

    fn warn(&mut self, token: &str) {
        self.warnings.push(format!("fake:{token}"));
    }

    /// The answer text: `fake:big` replaces the echo, otherwise `echo: <text>`.
    #[cfg(test)]
    pub fn answer(&self) -> String {
        self.answer_in(false, 0)
    }

    /// The answer as given in headless (`interactive == false`) or interactive mode, in a
    /// session holding `earlier_turns` user turns before this one; headless and interactive
    /// answers only differ with `fake:mode-suffix`, and the turn count only shows with
    /// `fake:turns`.
    pub fn answer_in(&self, interactive: bool, earlier_turns: usize) -> String {
        let answer = self.answer_body(interactive);
        if self.turns {
            format!("{answer} turns={earlier_turns}")
        } else {
            answer
        }
    }

    fn answer_body(&self, interactive: bool) -> String {
        let base = match self.big {
            // Plain ASCII keeps byte length equal to character length, so `big=1MB` is exactly
            // 1 MiB of answer however the reader counts.
            Some(n) => "x".repeat(n),
            None => format!("echo: {}", self.text),
        };
        match (self.mode_suffix, interactive) {
            (false, _) => base,
            (true, false) => format!("{base} (headless)"),
            (true, true) => format!("{base} (interactive)"),
        }
    }
}

/// Parses `123`, `500KB`, `10MB`, `1.5GB`, `64k`, `2MiB`: the units are binary (KB = 1024 bytes)
/// because the sizes are used to exercise buffers and memory limits, which are powers of two.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 0.0 {
        return None;
    }
    Some(bytes.round() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_removed_with_their_whitespace() {
        let s = Script::parse("  fake:sleep=0.25 hello fake:tool world fake:exit=3\n");
        assert_eq!(s.text, "hello world");
        assert_eq!(s.sleep, Duration::from_millis(250));
        assert!(s.tool);
        assert_eq!(s.exit, Some(3));
        assert_eq!(s.answer(), "echo: hello world");
    }

    #[test]
    fn token_must_start_a_word() {
        let s = Script::parse("notfake:tool x");
        assert_eq!(s.text, "notfake:tool x");
        assert!(!s.tool);
    }

    #[test]
    fn unknown_tokens_warn_and_vanish() {
        let s = Script::parse("fake:nope hi fake:sleep=abc");
        assert_eq!(s.text, "hi");
        assert_eq!(s.warnings, vec!["fake:nope", "fake:sleep=abc"]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("500KB"), Some(512_000));
        assert_eq!(parse_size("10MB"), Some(10 * 1024 * 1024));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("2GiB"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("12XB"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn turns_and_ratelimit_retry_tokens() {
        let s = Script::parse("fake:turns hello");
        assert!(s.turns);
        assert_eq!(s.answer_in(false, 3), "echo: hello turns=3");
        assert_eq!(Script::parse("hello").answer_in(false, 3), "echo: hello");
        let s = Script::parse("fake:ratelimit=retry x");
        assert!(s.ratelimit && s.ratelimit_retry);
        let s = Script::parse("fake:ratelimit x");
        assert!(s.ratelimit && !s.ratelimit_retry);
        assert_eq!(
            Script::parse("fake:ratelimit=soon").warnings,
            vec!["fake:ratelimit=soon"]
        );
    }

    #[test]
    fn big_replaces_echo() {
        let s = Script::parse("fake:big=10 ignored");
        assert_eq!(s.answer(), "xxxxxxxxxx");
    }
}
