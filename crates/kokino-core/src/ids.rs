use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// An agent id that is safe to use in file names, tmux session names and log lines.
///
/// Validation happens once, here, so that no process, file or tmux name is ever derived from an
/// unchecked string (the predecessor built tmux targets from raw ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AgentId(String);

/// The schema says what [`AgentId::parse`] accepts, so a schema-driven client or fuzzer
/// generates valid ids and knows the invalid ones.
impl utoipa::PartialSchema for AgentId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"))
            .min_length(Some(1))
            .max_length(Some(Self::MAX_LEN))
            .description(Some("An agent id: 1 to 128 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit."))
            .into()
    }
}

impl utoipa::ToSchema for AgentId {}

impl AgentId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(CoreError::InvalidAgentId(truncate_for_message(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Error messages quote the bad id; a 1 MB id must not become a 1 MB error body.
fn truncate_for_message(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl<'de> Deserialize<'de> for AgentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AgentId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $err:ident, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(CoreError::$err(other.chars().take(64).collect())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use string_enum;

string_enum!(
    /// The four agent CLIs Kokino drives.
    CliType, UnknownCliType, {
        ClaudeCode => "claude-code",
        Codex => "codex",
        Gemini => "gemini",
        FactoryDroid => "factory-droid",
    }
);

impl CliType {
    /// The binary name looked up on `PATH` when nothing overrides it.
    pub fn default_binary(self) -> &'static str {
        match self {
            CliType::ClaudeCode => "claude",
            CliType::Codex => "codex",
            CliType::Gemini => "gemini",
            CliType::FactoryDroid => "droid",
        }
    }
}

string_enum!(
    /// How an agent's CLI is run.
    CommMode, UnknownCommMode, {
        Headless => "headless",
        Tmux => "tmux",
        Shadow => "shadow",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_accept_the_documented_alphabet() {
        for ok in ["a", "A1", "agent-1", "x.y_z", &"a".repeat(128)] {
            assert!(AgentId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn agent_ids_reject_separators_metacharacters_control_and_length() {
        for bad in [
            "",
            "-a",
            ".a",
            "a/b",
            "../x",
            "a b",
            "a;rm",
            "a$(x)",
            "a\nb",
            "a\u{0}",
            "é",
            &"a".repeat(129),
        ] {
            let err = AgentId::parse(bad).unwrap_err();
            assert!(err.to_string().contains("invalid agent id"), "{bad:?}");
        }
    }

    #[test]
    fn cli_types_round_trip_through_their_wire_names() {
        for t in CliType::ALL {
            assert_eq!(t.as_str().parse::<CliType>().unwrap(), *t);
        }
        let err = "claude".parse::<CliType>().unwrap_err();
        assert!(err.to_string().contains("claude-code"));
    }
}
