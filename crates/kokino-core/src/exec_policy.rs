//! What an HTTP client may ask the broker to execute.
//!
//! Registering an agent names a program (`binary`) and an environment (`env`) the broker will
//! later start with its own user's rights. Both are the operator's decision, not the client's:
//! a `binary` must be one the configuration allows, and `env` must not set variables that change
//! how programs are loaded or interpreted (a preload library or an interpreter start-up hook runs
//! arbitrary code inside an otherwise allowed CLI). Everything here is pure: the caller resolves
//! what needs the file system (the CLI's default binary on `PATH`) and passes the result in.

use std::path::{Component, Path, PathBuf};

use crate::CoreError;

/// Environment variables an agent's `env` may not set, with the reason each one is refused.
/// Compared case-insensitively, so that a near miss is refused too.
pub const DENIED_ENV_VARS: &[(&str, &str)] = &[
    (
        "PATH",
        "decides which programs are found, including the interpreter of `#!/usr/bin/env node` CLIs",
    ),
    ("SHELL", "is the shell CLIs run their tool commands with"),
    (
        "BASH_ENV",
        "is a script every non-interactive bash runs before its command",
    ),
    (
        "ENV",
        "is a script every POSIX sh (dash, ash) runs at start",
    ),
    ("ZDOTDIR", "is where zsh reads its start-up scripts from"),
    (
        "PROMPT_COMMAND",
        "is a command bash runs before every prompt",
    ),
    (
        "SHELLOPTS",
        "turns on bash options (xtrace with PS4 runs code) before any script line",
    ),
    ("BASHOPTS", "turns on bash options before any script line"),
    ("PS4", "is expanded (and can run commands) by bash's xtrace"),
    ("IFS", "changes how every shell splits words"),
    (
        "GCONV_PATH",
        "makes glibc load character-conversion modules (shared libraries) from a directory",
    ),
    (
        "GLIBC_TUNABLES",
        "is parsed by the dynamic loader before the program runs",
    ),
    ("LOCPATH", "makes glibc load locale data from a directory"),
    (
        "NODE_OPTIONS",
        "passes options such as `--require` (preload a module) to every Node.js process",
    ),
    ("NODE_PATH", "adds directories Node.js loads modules from"),
    ("CLASSPATH", "decides where Java loads classes from"),
    (
        "JAVA_TOOL_OPTIONS",
        "passes options such as `-javaagent` to every JVM",
    ),
    (
        "_JAVA_OPTIONS",
        "passes options such as `-javaagent` to every JVM",
    ),
    (
        "JDK_JAVA_OPTIONS",
        "passes options such as `-javaagent` to the `java` launcher",
    ),
    (
        "OPENSSL_CONF",
        "can make OpenSSL load engines (shared libraries)",
    ),
    (
        "OPENSSL_ENGINES",
        "is where OpenSSL loads engines (shared libraries) from",
    ),
    (
        "LUA_INIT",
        "is Lua code every Lua interpreter runs at start",
    ),
    ("LUA_PATH", "decides where Lua loads modules from"),
    ("LUA_CPATH", "decides where Lua loads native modules from"),
    ("GIT_SSH", "is a program git runs for SSH remotes"),
    ("GIT_SSH_COMMAND", "is a command git runs for SSH remotes"),
    ("GIT_PROXY_COMMAND", "is a command git runs to connect"),
    ("GIT_EXEC_PATH", "is where git finds its sub-commands"),
    ("GIT_ASKPASS", "is a program git runs for credentials"),
    ("SSH_ASKPASS", "is a program ssh runs for credentials"),
    ("SUDO_ASKPASS", "is a program sudo runs for credentials"),
    ("GIT_EDITOR", "is a program git runs"),
    ("GIT_PAGER", "is a program git runs"),
    ("GIT_EXTERNAL_DIFF", "is a program git runs"),
    (
        "GIT_TEMPLATE_DIR",
        "holds hooks git copies into new repositories",
    ),
    ("EDITOR", "is a program tools run to edit text"),
    ("VISUAL", "is a program tools run to edit text"),
    ("PAGER", "is a program tools run to page output"),
];

/// Prefixes of variables an agent's `env` may not set (compared case-insensitively).
pub const DENIED_ENV_PREFIXES: &[(&str, &str)] = &[
    ("LD_", "is read by the dynamic loader (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT load shared libraries into the CLI)"),
    ("DYLD_", "is read by the macOS dynamic loader (DYLD_INSERT_LIBRARIES loads shared libraries)"),
    ("BASH_FUNC_", "defines bash functions that every bash imports at start"),
    ("PYTHON", "changes how Python starts (PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONWARNINGS import code)"),
    ("PERL", "changes how Perl starts (PERL5LIB, PERL5OPT load modules)"),
    ("RUBY", "changes how Ruby starts (RUBYLIB, RUBYOPT load code)"),
    ("GIT_CONFIG", "sets git configuration, which names programs git runs (core.sshCommand, core.fsmonitor)"),
];

/// Why `name` may not be set in an agent's `env`, or `None` when it may.
pub fn denied_env_var(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    DENIED_ENV_VARS
        .iter()
        .find(|(n, _)| *n == upper)
        .or_else(|| {
            DENIED_ENV_PREFIXES
                .iter()
                .find(|(p, _)| upper.starts_with(p))
        })
        .map(|(_, why)| *why)
}

/// Checks every key of an agent's `env` against the deny list.
pub fn check_env<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<(), CoreError> {
    for key in keys {
        if let Some(reason) = denied_env_var(key) {
            return Err(CoreError::EnvNotAllowed {
                name: key.clone(),
                reason: reason.to_owned(),
            });
        }
    }
    Ok(())
}

/// Which binaries an agent may name, as configured by the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinaryAllowlist {
    /// Absolute paths: a file allowed as itself, a directory allowed with everything beneath it.
    entries: Vec<PathBuf>,
}

impl BinaryAllowlist {
    /// Builds the list from the configuration. Entries must be absolute and free of `..`, so
    /// that what the operator wrote is what is matched.
    pub fn new<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self, CoreError> {
        let mut out = Vec::new();
        for e in entries {
            let e = e.as_ref();
            let path =
                normalize(e).ok_or_else(|| CoreError::InvalidAllowlistEntry(e.to_owned()))?;
            out.push(path);
        }
        Ok(BinaryAllowlist { entries: out })
    }

    pub fn entries(&self) -> &[PathBuf] {
        &self.entries
    }

    /// Whether an agent may name `binary`. `implicit` holds what is allowed without being
    /// listed: the CLI type's configured binary name and where that name resolves on the
    /// broker's `PATH` (resolved by the caller). A bare name other than those is refused, because
    /// it would be looked up on `PATH` and could name any program there.
    pub fn check(&self, binary: &str, implicit: &[&str]) -> Result<(), CoreError> {
        if implicit.contains(&binary) {
            return Ok(());
        }
        let refused = || CoreError::BinaryNotAllowed(binary.to_owned());
        let path = normalize(binary).ok_or_else(refused)?;
        let implicit_match = implicit
            .iter()
            .filter_map(|i| normalize(i))
            .any(|i| i == path);
        if implicit_match || self.entries.iter().any(|e| path.starts_with(e)) {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

/// An absolute path without `.`, `..` or repeated separators; `None` for a relative path or one
/// with `..` (which could climb out of an allowed directory).
fn normalize(raw: &str) -> Option<PathBuf> {
    let path = Path::new(raw);
    if !path.is_absolute() || raw.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(e: &[&str]) -> BinaryAllowlist {
        BinaryAllowlist::new(e.iter().copied()).unwrap()
    }

    #[test]
    fn nothing_is_allowed_by_default_except_the_implicit_binary() {
        let l = BinaryAllowlist::default();
        assert!(l.check("/bin/sh", &[]).is_err());
        assert!(l.check("sh", &["claude"]).is_err());
        assert!(l.check("claude", &["claude", "/usr/bin/claude"]).is_ok());
        assert!(l
            .check("/usr/bin/claude", &["claude", "/usr/bin/claude"])
            .is_ok());
        assert!(l
            .check("/usr/bin//./claude", &["claude", "/usr/bin/claude"])
            .is_ok());
        assert!(l
            .check("/usr/bin/codex", &["claude", "/usr/bin/claude"])
            .is_err());
    }

    #[test]
    fn directories_allow_what_is_beneath_them_and_nothing_else() {
        let l = list(&["/opt/agents", "/usr/local/bin/claude"]);
        assert!(l.check("/opt/agents/claude", &[]).is_ok());
        assert!(l.check("/opt/agents/sub/codex", &[]).is_ok());
        assert!(l.check("/usr/local/bin/claude", &[]).is_ok());
        // Component-wise: /opt/agents-evil is not beneath /opt/agents.
        assert!(l.check("/opt/agents-evil/sh", &[]).is_err());
        assert!(l.check("/usr/local/bin/claude2", &[]).is_err());
        // `..` could climb out of an allowed directory.
        assert!(l.check("/opt/agents/../../bin/sh", &[]).is_err());
        // Relative paths depend on the broker's working directory.
        assert!(l.check("opt/agents/claude", &[]).is_err());
        assert_eq!(
            l.check("/bin/sh", &[]).unwrap_err(),
            CoreError::BinaryNotAllowed("/bin/sh".into())
        );
    }

    #[test]
    fn allowlist_entries_must_be_absolute() {
        assert!(BinaryAllowlist::new(["bin"]).is_err());
        assert!(BinaryAllowlist::new(["/a/../b"]).is_err());
        assert!(BinaryAllowlist::new(["/a/./b/"]).is_ok());
    }

    #[test]
    fn loader_and_interpreter_hooks_are_denied() {
        for name in [
            "LD_PRELOAD",
            "ld_preload",
            "LD_LIBRARY_PATH",
            "DYLD_INSERT_LIBRARIES",
            "NODE_OPTIONS",
            "BASH_ENV",
            "ENV",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "PERL5OPT",
            "RUBYOPT",
            "GIT_CONFIG_PARAMETERS",
            "BASH_FUNC_ls%%",
            "PATH",
        ] {
            assert!(denied_env_var(name).is_some(), "{name}");
        }
        for name in [
            "HOME",
            "ANTHROPIC_API_KEY",
            "LANG",
            "ENVIRONMENT",
            "NODE_ENV",
            "TERM",
        ] {
            assert!(denied_env_var(name).is_none(), "{name}");
        }
        let env = ["HOME".to_owned(), "LD_PRELOAD".to_owned()];
        match check_env(&env) {
            Err(CoreError::EnvNotAllowed { name, .. }) => assert_eq!(name, "LD_PRELOAD"),
            other => panic!("{other:?}"),
        }
    }
}
