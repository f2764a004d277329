//! Factory Droid's TUI: a `>` prompt, and its login screen.
//!
//! Droid 0.225's TUI asks for a Factory account before anything else ("Please login with your
//! Factory account to continue. > Login / Exit"), even with a bring-your-own-key model that
//! `droid exec` runs without one, and exits at once when `FACTORY_API_KEY` is not a valid
//! Factory key. Without a Factory login a Droid agent cannot run in tmux at all: the login
//! screen fails the run at once with `auth_error` and its words.

use kokino_core::{CliType, OutcomeClass};

use super::{short_model_flag, BlockedScreen, Tui};
use crate::SessionArg;

/// Factory Droid's TUI.
#[derive(Debug, Clone, Copy, Default)]
pub struct DroidTui;

impl Tui for DroidTui {
    fn cli(&self) -> CliType {
        CliType::FactoryDroid
    }

    /// `droid [-m MODEL]`: the TUI has no resume argument, so a new tmux session of a Droid
    /// agent starts a new Droid session.
    fn interactive_args(&self, _session: SessionArg<'_>, model: Option<&str>) -> Vec<String> {
        let mut args = Vec::new();
        short_model_flag(&mut args, model);
        args
    }

    fn is_prompt_line(&self, line: &str) -> bool {
        line.trim() == ">"
    }

    fn prompt_output_suffix(&self) -> &'static [u8] {
        b"> "
    }

    fn blocked_screens(&self) -> &'static [BlockedScreen] {
        DROID_BLOCKED
    }
}

/// The screens that stop this TUI for good.
const DROID_BLOCKED: &[BlockedScreen] = &[BlockedScreen::new(
    "Please login with your Factory account to continue.",
    OutcomeClass::AuthError,
    "the Droid TUI needs a Factory account login (log in with `droid` as the broker's user, or run the agent headless)",
)];
