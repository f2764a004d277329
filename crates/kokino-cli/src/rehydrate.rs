//! Seeding a new CLI session with a conversation the CLI no longer has.
//!
//! A CLI keeps its session in its own files (Claude's project transcripts, Codex's rollouts,
//! Gemini's chats, Droid's sessions). When those are gone — a cleanup period, a wiped `HOME`,
//! another machine, Droid without Factory's servers — the CLI refuses to resume, although the
//! broker holds the whole conversation in its store. Rather than fail every later execute, the
//! broker starts a new CLI session whose first prompt carries the earlier turns, rendered here.
//!
//! The rendering is bounded, so that a long conversation cannot exceed what a CLI accepts on
//! stdin or what a model takes in one message: at most [`REHYDRATION_MAX_BYTES`] of earlier
//! turns, the newest kept first, each turn cut to [`REHYDRATION_TURN_MAX_BYTES`] (its beginning
//! and its end kept), and `system` turns (the broker's own failure notes) left out. What was left
//! out is said in the text, so the model knows the history is partial.

use kokino_core::Role;

/// The most bytes of earlier turns a seeded prompt carries.
pub const REHYDRATION_MAX_BYTES: usize = 48 * 1024;

/// The most bytes of one earlier turn a seeded prompt carries.
pub const REHYDRATION_TURN_MAX_BYTES: usize = 8 * 1024;

/// One earlier turn of the conversation, oldest first in the slice given to
/// [`rehydration_prompt`].
#[derive(Debug, Clone, Copy)]
pub struct PastTurn<'a> {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: &'a str,
}

/// The first prompt of a new CLI session that continues `history`, followed by the new `prompt`.
/// With no user or assistant turn in `history`, the prompt is returned unchanged.
pub fn rehydration_prompt(history: &[PastTurn<'_>], prompt: &str) -> String {
    let kept_turns: Vec<&PastTurn<'_>> = history
        .iter()
        .filter(|t| matches!(t.role, Role::User | Role::Assistant))
        .collect();
    if kept_turns.is_empty() {
        return prompt.to_owned();
    }
    // Newest first until the budget is spent, then back to oldest first.
    let mut rendered: Vec<String> = Vec::new();
    let mut used = 0usize;
    let mut omitted = 0usize;
    for t in kept_turns.iter().rev() {
        let block = render_turn(t);
        if used + block.len() > REHYDRATION_MAX_BYTES {
            omitted += 1;
            continue;
        }
        used += block.len();
        rendered.push(block);
    }
    rendered.reverse();
    let mut out = String::with_capacity(used + prompt.len() + 512);
    out.push_str(
        "[The earlier turns of this conversation follow, oldest first. They are repeated here \
         because the previous CLI session could not be resumed; continue the conversation from \
         them.]\n\n",
    );
    if omitted > 0 {
        out.push_str(&format!(
            "[{omitted} earlier turn(s) are left out for length.]\n\n"
        ));
    }
    for block in rendered {
        out.push_str(&block);
    }
    out.push_str("[End of the earlier turns. The new message follows.]\n\n");
    out.push_str(prompt);
    out
}

fn render_turn(t: &PastTurn<'_>) -> String {
    let tag = match t.role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::System => "system",
    };
    format!("<{tag}>\n{}\n</{tag}>\n\n", clip(t.content))
}

/// The turn itself when short enough, else its beginning and end with the cut said.
fn clip(s: &str) -> String {
    if s.len() <= REHYDRATION_TURN_MAX_BYTES {
        return s.to_owned();
    }
    let half = REHYDRATION_TURN_MAX_BYTES / 2;
    let mut head = half;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - half;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}\n[… {} bytes left out …]\n{}",
        &s[..head],
        tail - head,
        &s[tail..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(role: Role, content: &str) -> PastTurn<'_> {
        PastTurn { role, content }
    }

    #[test]
    fn carries_the_earlier_turns_oldest_first_then_the_prompt() {
        let h = [
            t(Role::User, "first question"),
            t(Role::Assistant, "first answer"),
            t(Role::System, "cli_error: boom"),
            t(Role::User, "second question"),
            t(Role::Assistant, "second answer"),
        ];
        let p = rehydration_prompt(&h, "third question");
        let i1 = p.find("first question").unwrap();
        let i2 = p.find("second answer").unwrap();
        assert!(i1 < i2);
        assert!(p.ends_with("third question"));
        assert!(!p.contains("boom"), "system turns are the broker's notes");
        assert!(!p.contains("left out"));
    }

    #[test]
    fn no_history_leaves_the_prompt_alone() {
        assert_eq!(rehydration_prompt(&[], "hi"), "hi");
        assert_eq!(rehydration_prompt(&[t(Role::System, "x")], "hi"), "hi");
    }

    #[test]
    fn is_bounded_keeping_the_newest_turns() {
        let big = "é".repeat(REHYDRATION_TURN_MAX_BYTES);
        let mut h = Vec::new();
        for _ in 0..40 {
            h.push(t(Role::User, &big));
        }
        h.push(t(Role::User, "the newest"));
        let p = rehydration_prompt(&h, "now");
        assert!(p.len() <= REHYDRATION_MAX_BYTES + 1024, "{}", p.len());
        assert!(p.contains("the newest"));
        assert!(p.contains("left out for length"));
        assert!(p.contains("bytes left out"));
    }
}
