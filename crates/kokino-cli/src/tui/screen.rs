//! Reading the menus and the furniture of the TUIs' screens.
//!
//! The four TUIs draw their first-run questions as numbered menus with a selection glyph in
//! front of the current option (`❯ 1. Yes, I trust this folder`, `› 1. Trust and continue`,
//! `● 1. Trust folder (work)`). Answering one means moving the cursor onto the wanted option and
//! pressing Enter: a bare Enter takes whatever the default is, and Claude's API-key question
//! defaults to "No (recommended)".

use kokino_core::OutcomeClass;

use super::{FirstRunScreen, ScreenAnswer, StartupScreen};

/// A screen the CLI cannot get past without a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockedScreen {
    /// Text that appears on the screen when it is shown (the CLI's own words).
    pub marker: &'static str,
    /// The outcome class of the failed run.
    pub class: OutcomeClass,
    /// What the broker says about it, before the screen's own words.
    pub reason: &'static str,
}

impl BlockedScreen {
    /// A screen recognised by `marker` that fails the run with `class` and `reason`.
    pub const fn new(marker: &'static str, class: OutcomeClass, reason: &'static str) -> Self {
        BlockedScreen {
            marker,
            class,
            reason,
        }
    }
}

/// The glyphs the TUIs put in front of the selected option of a menu.
const SELECTION_GLYPHS: [char; 4] = ['❯', '›', '●', '>'];

/// One option of a numbered menu: its number, whether the cursor is on it, its text.
#[derive(Debug, PartialEq, Eq)]
struct MenuOption<'a> {
    number: u32,
    selected: bool,
    text: &'a str,
}

/// The option a line shows (`  2. No, exit`, `❯ 1. Yes`), inside a box's borders or not.
fn menu_option(line: &str) -> Option<MenuOption<'_>> {
    let t = line.trim().trim_matches('│').trim();
    let (selected, rest) = match t.strip_prefix(SELECTION_GLYPHS) {
        Some(rest) => (true, rest.trim_start()),
        None => (false, t),
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || digits > 2 {
        return None;
    }
    let number = rest[..digits].parse().ok()?;
    let text = rest[digits..].strip_prefix(". ")?;
    Some(MenuOption {
        number,
        selected,
        text: text.trim(),
    })
}

/// The options of the last numbered menu on the screen, in order: an option numbered 1
/// starts a new menu (a menu drawn again below an earlier one, or an earlier list).
fn menu(lines: &[String]) -> Vec<MenuOption<'_>> {
    let mut options: Vec<MenuOption<'_>> = Vec::new();
    for o in lines.iter().filter_map(|l| menu_option(l)) {
        if o.number == 1 {
            options.clear();
        }
        options.push(o);
    }
    options
}

/// The keys that move a menu's cursor onto the option containing `wanted` and choose it:
/// `Down`/`Up` from the selected option, then `Enter`. `None` when the screen shows no such
/// option, or no selected one to start from.
pub fn choose_option(lines: &[String], wanted: &str) -> Option<Vec<String>> {
    let options = menu(lines);
    let target = options.iter().position(|o| o.text.contains(wanted))?;
    let current = options.iter().position(|o| o.selected)?;
    let (key, n) = if target >= current {
        ("Down", target - current)
    } else {
        ("Up", current - target)
    };
    let mut keys = vec![key.to_owned(); n];
    keys.push("Enter".to_owned());
    Some(keys)
}

/// How a recognised first-run screen is answered as it is shown now.
pub(super) fn answer(screen: &FirstRunScreen, lines: &[String]) -> StartupScreen {
    let keys = match screen.option {
        None => screen.keys.iter().map(|k| (*k).to_owned()).collect(),
        Some(wanted) => match choose_option(lines, wanted) {
            Some(keys) => keys,
            // The menu is still being drawn, or it changed: wait for the next screen rather
            // than press a key whose effect is unknown.
            None => return StartupScreen::NotYet,
        },
    };
    StartupScreen::FirstRun(ScreenAnswer {
        name: screen.name,
        keys,
    })
}

/// A menu that no profile recognises: a screen waiting for a choice nobody will make. Says
/// so (with its options) so the run fails at once rather than at the startup timeout.
pub(super) fn unknown_menu(lines: &[String]) -> Option<String> {
    let options = menu(lines);
    if options.len() < 2 || !options.iter().any(|o| o.selected) {
        return None;
    }
    let texts: Vec<&str> = options.iter().map(|o| o.text).collect();
    Some(format!(
        "an unrecognised screen asks for a choice ({})",
        texts.join(" / ")
    ))
}

/// The TUIs' furniture around an answer: box borders and rules, the hint and status lines, and
/// the timing notes printed after a turn (`✻ Cooked for 0s`, `Worked for <1s • 9:54 PM`).
pub fn is_chrome_line(line: &str) -> bool {
    let t = line.trim().trim_matches('│').trim();
    if t.is_empty() {
        return true;
    }
    if t.chars().all(|c| "─━═╭╮╰╯┌┐└┘│┃╌┄ ".contains(c)) {
        return true;
    }
    const HINTS: [&str; 6] = [
        "? for shortcuts",
        "Shift+Tab to accept edits",
        "shift+tab to cycle modes",
        "esc to interrupt",
        "Worked for ",
        "accept edits on",
    ];
    if HINTS.iter().any(|h| t.starts_with(h)) || t.ends_with("? for shortcuts") {
        return true;
    }
    // Claude Code's "✻ Cooked for 0s", "✻ Brewed for 2s": a glyph, a verb, "for", a duration.
    let mut words = t.split_whitespace();
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(g), Some(_), Some("for")) if g.chars().count() == 1 && !g.chars().all(char::is_alphanumeric)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_chosen_by_text_wherever_the_cursor_is() {
        let api = v(&[
            "  Do you want to use this API key?",
            "    1. Yes",
            "  ❯ 2. No (recommended)",
            "  Enter to confirm · Esc to cancel",
        ]);
        assert_eq!(choose_option(&api, "Yes").unwrap(), ["Up", "Enter"]);
        let trust = v(&["│ ● 1. Trust folder (w) │", "│   2. Trust parent folder │"]);
        assert_eq!(choose_option(&trust, "Trust folder").unwrap(), ["Enter"]);
        assert_eq!(choose_option(&trust, "Nope"), None);
    }

    #[test]
    fn unknown_menus_are_reported() {
        let m = v(&["Pick one", "❯ 1. Red", "  2. Blue"]);
        assert_eq!(
            unknown_menu(&m).unwrap(),
            "an unrecognised screen asks for a choice (Red / Blue)"
        );
        assert_eq!(unknown_menu(&v(&["1. a note", "2. another"])), None);
    }

    #[test]
    fn chrome() {
        assert!(is_chrome_line("✻ Cooked for 0s"));
        assert!(is_chrome_line("  Worked for <1s • 9:54 PM"));
        assert!(is_chrome_line("──────────"));
        assert!(is_chrome_line("                 ? for shortcuts"));
        assert!(!is_chrome_line("FAKE_ANSWER: 0 earlier user turns"));
        assert!(!is_chrome_line("4 is the answer for you"));
    }
}
