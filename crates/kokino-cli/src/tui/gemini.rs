//! Gemini CLI's TUI: a `>` prompt, no session record followed yet (the screen is the signal).

use kokino_core::CliType;

use super::{short_model_flag, Tui};
use crate::SessionArg;

/// Gemini CLI's TUI.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeminiTui;

impl Tui for GeminiTui {
    fn cli(&self) -> CliType {
        CliType::Gemini
    }

    /// `gemini [-m MODEL] [--resume ID]`.
    fn interactive_args(&self, session: SessionArg<'_>, model: Option<&str>) -> Vec<String> {
        let mut args = Vec::new();
        short_model_flag(&mut args, model);
        if let SessionArg::Resume { session_id } = session {
            args.extend(["--resume".to_owned(), session_id.to_owned()]);
        }
        args
    }

    fn is_prompt_line(&self, line: &str) -> bool {
        line.trim() == ">"
    }

    fn prompt_output_suffix(&self) -> &'static [u8] {
        b"> "
    }
}
