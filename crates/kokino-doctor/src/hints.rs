//! What the operator should type to fix a failure, per CLI. The predecessor gave the same (and
//! wrong) install hint for every CLI; these are the vendors' own commands.

use kokino_core::CliType;

/// How to install the CLI.
pub fn install(cli: CliType) -> &'static str {
    match cli {
        CliType::ClaudeCode => "npm install -g @anthropic-ai/claude-code",
        CliType::Codex => "npm install -g @openai/codex",
        CliType::Gemini => "npm install -g @google/gemini-cli",
        CliType::FactoryDroid => "curl -fsSL https://app.factory.ai/cli | sh",
    }
}

/// How to log the CLI in, as the user (and `HOME`) the broker runs CLIs with.
pub fn login(cli: CliType) -> &'static str {
    match cli {
        CliType::ClaudeCode => {
            "run `claude` and type `/login` (or `claude setup-token` and give the agent \
             CLAUDE_CODE_OAUTH_TOKEN)"
        }
        CliType::Codex => {
            "run `codex login` (or `printenv OPENAI_API_KEY | codex login --with-api-key`)"
        }
        CliType::Gemini => {
            "run `gemini` and choose \"Login with Google\" (this writes ~/.gemini/settings.json and \
             ~/.gemini/oauth_creds.json), or set GEMINI_API_KEY for the broker or the agent"
        }
        CliType::FactoryDroid => {
            "run `droid` and type `/login`, or set FACTORY_API_KEY for the broker or the agent"
        }
    }
}
