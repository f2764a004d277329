//! Factory Droid's TUI: a `>` prompt, no session record followed yet (the screen is the signal).

use kokino_core::CliType;

use super::{short_model_flag, Tui};
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
}
