//! Fallback to tmux (behavior.md, "Fallback" and step 2 of the execution path).
//!
//! Two kinds of override reroute executions to tmux: a CLI type can be *disabled* (every agent of
//! that CLI runs in tmux) and an agent can be *forced* (that agent runs in tmux). Each override
//! has a reason, a time, and whether the broker set it by itself (`auto`: an opened breaker, a
//! failed doctor check) or an operator did. The broker only ever lifts its own overrides: an
//! operator's entry stays until an operator clears it, which is what makes automatic fallback safe
//! to leave on.
//!
//! This module is the pure state; the service keeps it behind a lock and persists every change
//! through the store (kind `"cli"` or `"agent"`, see [`Target`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::breaker::ScopeError;
use crate::{AgentId, CliType, CommMode};

/// One override: why, since when, and whether the broker set it by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Override {
    pub reason: String,
    pub since: DateTime<Utc>,
    pub auto: bool,
}

/// What an override applies to; `kind()` and `key()` are the stored row's columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Cli(CliType),
    Agent(AgentId),
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Cli(_) => "cli",
            Target::Agent(_) => "agent",
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Target::Cli(cli) => cli.as_str(),
            Target::Agent(id) => id.as_str(),
        }
    }

    /// The inverse of (`kind`, `key`), for rows read back from the store.
    pub fn parse(kind: &str, key: &str) -> Result<Self, ScopeError> {
        match kind {
            "cli" => Ok(Target::Cli(key.parse()?)),
            "agent" => Ok(Target::Agent(AgentId::parse(key)?)),
            other => Err(ScopeError::UnknownKind(other.chars().take(64).collect())),
        }
    }
}

/// Where the effective mode came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeOrigin {
    /// The agent's own `commMode`.
    Registered,
    /// The agent is forced to tmux.
    AgentForced,
    /// The agent's CLI type is disabled, so it runs in tmux.
    CliDisabled,
}

/// The mode an execution runs in, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMode {
    pub mode: CommMode,
    pub origin: ModeOrigin,
    /// The override's reason when the mode was rerouted.
    pub reason: Option<String>,
}

/// No mode can run this execution (503 `NO_EXECUTION_MODE`). `reason` is the whole explanation,
/// fit for the error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NoMode {
    /// The mode that would have been used.
    pub wanted: CommMode,
    pub origin: ModeOrigin,
    pub reason: String,
}

/// `GET /api/fallback/status` (http-api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FallbackStatus {
    #[serde(rename = "disabledCLIs")]
    pub disabled_clis: Vec<DisabledCli>,
    #[serde(rename = "forcedFallbacks")]
    pub forced_fallbacks: Vec<ForcedFallback>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisabledCli {
    pub cli_type: CliType,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub auto: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForcedFallback {
    pub agent_id: AgentId,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub auto: bool,
}

/// The overrides in force. Empty in steady state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FallbackState {
    disabled_clis: BTreeMap<CliType, Override>,
    forced_agents: BTreeMap<AgentId, Override>,
}

impl FallbackState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn disabled_clis(&self) -> &BTreeMap<CliType, Override> {
        &self.disabled_clis
    }

    pub fn forced_agents(&self) -> &BTreeMap<AgentId, Override> {
        &self.forced_agents
    }

    pub fn is_empty(&self) -> bool {
        self.disabled_clis.is_empty() && self.forced_agents.is_empty()
    }

    /// The override on `target`, if any.
    pub fn get(&self, target: &Target) -> Option<&Override> {
        match target {
            Target::Cli(cli) => self.disabled_clis.get(cli),
            Target::Agent(id) => self.forced_agents.get(id),
        }
    }

    /// Puts a persisted override back (at start-up).
    pub fn restore(&mut self, target: Target, entry: Override) {
        match target {
            Target::Cli(cli) => {
                self.disabled_clis.insert(cli, entry);
            }
            Target::Agent(id) => {
                self.forced_agents.insert(id, entry);
            }
        }
    }

    // ---- operators ----

    /// Disables a CLI type (an operator's entry, replacing any automatic one). Returns the entry
    /// it replaced.
    pub fn disable_cli(
        &mut self,
        cli: CliType,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Option<Override> {
        self.disabled_clis.insert(cli, manual(reason, now))
    }

    /// Enables a CLI type again, whoever disabled it. Returns whether it was disabled.
    pub fn enable_cli(&mut self, cli: CliType) -> bool {
        self.disabled_clis.remove(&cli).is_some()
    }

    /// Forces an agent to tmux (an operator's entry, replacing any automatic one). Returns the
    /// entry it replaced.
    pub fn force_agent(
        &mut self,
        agent: &AgentId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Option<Override> {
        self.forced_agents
            .insert(agent.clone(), manual(reason, now))
    }

    /// Clears an agent's override, whoever set it. Returns whether there was one.
    pub fn clear_agent(&mut self, agent: &AgentId) -> bool {
        self.forced_agents.remove(agent).is_some()
    }

    /// Clears every override of both kinds. Returns how many there were.
    pub fn clear_all(&mut self) -> usize {
        let n = self.disabled_clis.len() + self.forced_agents.len();
        self.disabled_clis.clear();
        self.forced_agents.clear();
        n
    }

    // ---- the broker itself ----

    /// Forces an agent to tmux because its breaker opened. Returns whether an entry was written:
    /// an existing entry is left alone, an operator's because the broker never overrides one and
    /// an automatic one because it already says the same (and keeps its original time).
    pub fn auto_force_agent(&mut self, agent: &AgentId, reason: &str, now: DateTime<Utc>) -> bool {
        if self.forced_agents.contains_key(agent) {
            return false;
        }
        self.forced_agents
            .insert(agent.clone(), automatic(reason, now));
        true
    }

    /// Clears the agent's override if, and only if, the broker set it. Returns whether it did.
    pub fn auto_clear_agent(&mut self, agent: &AgentId) -> bool {
        if self.forced_agents.get(agent).is_some_and(|o| o.auto) {
            self.forced_agents.remove(agent);
            true
        } else {
            false
        }
    }

    /// Disables a CLI type because the doctor found it unusable; same rules as
    /// [`auto_force_agent`](Self::auto_force_agent).
    pub fn auto_disable_cli(&mut self, cli: CliType, reason: &str, now: DateTime<Utc>) -> bool {
        if self.disabled_clis.contains_key(&cli) {
            return false;
        }
        self.disabled_clis.insert(cli, automatic(reason, now));
        true
    }

    /// Enables a CLI type again after a passing doctor run, if, and only if, the broker disabled
    /// it. Returns whether it did.
    pub fn auto_enable_cli(&mut self, cli: CliType) -> bool {
        if self.disabled_clis.get(&cli).is_some_and(|o| o.auto) {
            self.disabled_clis.remove(&cli);
            true
        } else {
            false
        }
    }

    // ---- reading ----

    /// The mode an execution of this agent runs in (behavior.md, execution path step 2): agent
    /// forced → tmux; CLI disabled → tmux; else the agent's `commMode`. A mode that needs tmux
    /// (tmux itself, and shadow, whose second leg runs in tmux) fails when tmux is not available,
    /// with a reason naming both the mode's origin and the missing tmux.
    pub fn effective_mode(
        &self,
        agent: &AgentId,
        cli: CliType,
        comm_mode: CommMode,
        tmux_available: bool,
    ) -> Result<EffectiveMode, NoMode> {
        let (mode, origin, reason) = if let Some(o) = self.forced_agents.get(agent) {
            (
                CommMode::Tmux,
                ModeOrigin::AgentForced,
                Some(o.reason.clone()),
            )
        } else if let Some(o) = self.disabled_clis.get(&cli) {
            (
                CommMode::Tmux,
                ModeOrigin::CliDisabled,
                Some(o.reason.clone()),
            )
        } else {
            (comm_mode, ModeOrigin::Registered, None)
        };
        let needs_tmux = matches!(mode, CommMode::Tmux | CommMode::Shadow);
        if needs_tmux && !tmux_available {
            let why = match origin {
                ModeOrigin::AgentForced => format!(
                    "agent {agent} is forced to tmux by fallback ({})",
                    reason.as_deref().unwrap_or_default()
                ),
                ModeOrigin::CliDisabled => format!(
                    "CLI type {cli} is disabled for headless runs by fallback ({})",
                    reason.as_deref().unwrap_or_default()
                ),
                ModeOrigin::Registered => {
                    format!("agent {agent} is registered with commMode {comm_mode}")
                }
            };
            return Err(NoMode {
                wanted: mode,
                origin,
                reason: format!("{why}, but tmux is not available on this host"),
            });
        }
        Ok(EffectiveMode {
            mode,
            origin,
            reason,
        })
    }

    /// The status endpoint's answer, each list sorted by key.
    pub fn status(&self) -> FallbackStatus {
        FallbackStatus {
            disabled_clis: self
                .disabled_clis
                .iter()
                .map(|(cli, o)| DisabledCli {
                    cli_type: *cli,
                    reason: o.reason.clone(),
                    since: o.since,
                    auto: o.auto,
                })
                .collect(),
            forced_fallbacks: self
                .forced_agents
                .iter()
                .map(|(id, o)| ForcedFallback {
                    agent_id: id.clone(),
                    reason: o.reason.clone(),
                    since: o.since,
                    auto: o.auto,
                })
                .collect(),
        }
    }
}

fn manual(reason: &str, now: DateTime<Utc>) -> Override {
    Override {
        reason: reason.to_owned(),
        since: now,
        auto: false,
    }
}

fn automatic(reason: &str, now: DateTime<Utc>) -> Override {
    Override {
        reason: reason.to_owned(),
        since: now,
        auto: true,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 31, 12, 0, 0).unwrap()
    }

    fn later() -> DateTime<Utc> {
        t0() + chrono::Duration::minutes(5)
    }

    fn agent(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn cli_disable_and_enable() {
        let mut f = FallbackState::new();
        assert!(f.is_empty());
        assert_eq!(f.disable_cli(CliType::Codex, "quota", t0()), None);
        let previous = f
            .disable_cli(CliType::Codex, "still quota", later())
            .unwrap();
        assert_eq!(previous.reason, "quota");
        let entry = f.get(&Target::Cli(CliType::Codex)).unwrap();
        assert_eq!(
            entry,
            &Override {
                reason: "still quota".into(),
                since: later(),
                auto: false
            }
        );
        assert!(f.enable_cli(CliType::Codex));
        assert!(!f.enable_cli(CliType::Codex));
        assert!(f.is_empty());
    }

    #[test]
    fn agent_force_and_clear() {
        let mut f = FallbackState::new();
        let a = agent("alpha");
        assert_eq!(f.force_agent(&a, "flaky headless", t0()), None);
        assert_eq!(f.forced_agents()[&a].reason, "flaky headless");
        assert!(!f.forced_agents()[&a].auto);
        assert!(f.clear_agent(&a));
        assert!(!f.clear_agent(&a));
    }

    #[test]
    fn clear_all_counts_both_kinds() {
        let mut f = FallbackState::new();
        assert_eq!(f.clear_all(), 0);
        f.disable_cli(CliType::Gemini, "x", t0());
        f.auto_disable_cli(CliType::Codex, "doctor", t0());
        f.force_agent(&agent("a"), "y", t0());
        f.auto_force_agent(&agent("b"), "breaker", t0());
        assert_eq!(f.clear_all(), 4);
        assert!(f.is_empty());
    }

    #[test]
    fn the_broker_never_clears_a_manual_agent_entry() {
        let mut f = FallbackState::new();
        let a = agent("alpha");
        // Automatic entries come and go with the breaker.
        assert!(f.auto_force_agent(&a, "circuit agent:alpha opened", t0()));
        assert!(f.forced_agents()[&a].auto);
        // A second opening keeps the first entry and its time.
        assert!(!f.auto_force_agent(&a, "again", later()));
        assert_eq!(f.forced_agents()[&a].since, t0());
        assert!(f.auto_clear_agent(&a));
        assert!(!f.auto_clear_agent(&a));

        // A manual entry is never cleared or replaced automatically.
        f.force_agent(&a, "operator", t0());
        assert!(!f.auto_force_agent(&a, "breaker", later()));
        assert!(!f.auto_clear_agent(&a));
        assert_eq!(f.forced_agents()[&a].reason, "operator");
        assert!(!f.forced_agents()[&a].auto);

        // A manual force over an automatic entry makes it manual.
        f.clear_agent(&a);
        f.auto_force_agent(&a, "breaker", t0());
        let previous = f.force_agent(&a, "operator", later()).unwrap();
        assert!(previous.auto);
        assert!(!f.forced_agents()[&a].auto);
        assert_eq!(f.forced_agents()[&a].since, later());
        assert!(!f.auto_clear_agent(&a));
        // The operator's clear removes any entry.
        assert!(f.clear_agent(&a));
    }

    #[test]
    fn the_broker_never_enables_a_cli_an_operator_disabled() {
        let mut f = FallbackState::new();
        let cli = CliType::ClaudeCode;
        assert!(f.auto_disable_cli(cli, "doctor: auth failed", t0()));
        assert!(!f.auto_disable_cli(cli, "doctor: auth failed", later()));
        assert_eq!(f.disabled_clis()[&cli].since, t0());
        assert!(f.auto_enable_cli(cli));
        assert!(!f.auto_enable_cli(cli));

        f.disable_cli(cli, "operator", t0());
        assert!(!f.auto_disable_cli(cli, "doctor", later()));
        assert!(!f.auto_enable_cli(cli));
        assert_eq!(f.disabled_clis()[&cli].reason, "operator");

        f.enable_cli(cli);
        f.auto_disable_cli(cli, "doctor", t0());
        f.disable_cli(cli, "operator", later());
        assert!(!f.auto_enable_cli(cli));
        // The operator's enable removes an automatic entry too.
        f.enable_cli(cli);
        f.auto_disable_cli(cli, "doctor", t0());
        assert!(f.enable_cli(cli));
    }

    #[test]
    fn effective_mode_follows_the_execution_path_rules() {
        let mut f = FallbackState::new();
        let (a, b) = (agent("alpha"), agent("beta"));
        let cli = CliType::Codex;
        // No override: the registered mode, whatever it is.
        for mode in [CommMode::Headless, CommMode::Tmux, CommMode::Shadow] {
            let m = f.effective_mode(&a, cli, mode, true).unwrap();
            assert_eq!(
                (m.mode, m.origin, m.reason),
                (mode, ModeOrigin::Registered, None)
            );
        }
        // A headless agent needs no tmux.
        assert!(f.effective_mode(&a, cli, CommMode::Headless, false).is_ok());

        // The CLI disabled: every agent of that CLI is rerouted to tmux, others are not.
        f.disable_cli(cli, "codex 5xx", t0());
        let m = f.effective_mode(&b, cli, CommMode::Headless, true).unwrap();
        assert_eq!(m.mode, CommMode::Tmux);
        assert_eq!(m.origin, ModeOrigin::CliDisabled);
        assert_eq!(m.reason.as_deref(), Some("codex 5xx"));
        let other = f
            .effective_mode(&b, CliType::Gemini, CommMode::Headless, true)
            .unwrap();
        assert_eq!(other.mode, CommMode::Headless);

        // The agent forced: tmux, and the agent's entry wins over the CLI's.
        f.force_agent(&a, "breaker", t0());
        for mode in [CommMode::Headless, CommMode::Shadow] {
            let m = f.effective_mode(&a, cli, mode, true).unwrap();
            assert_eq!(
                (m.mode, m.origin),
                (CommMode::Tmux, ModeOrigin::AgentForced)
            );
            assert_eq!(m.reason.as_deref(), Some("breaker"));
        }
    }

    #[test]
    fn effective_mode_without_tmux_names_the_reason() {
        let mut f = FallbackState::new();
        let a = agent("alpha");
        let cli = CliType::Gemini;
        for mode in [CommMode::Tmux, CommMode::Shadow] {
            let err = f.effective_mode(&a, cli, mode, false).unwrap_err();
            assert_eq!(err.origin, ModeOrigin::Registered);
            assert_eq!(err.wanted, mode);
            assert!(err.reason.contains(&format!("commMode {mode}")), "{err}");
            assert!(err.to_string().contains("tmux is not available"), "{err}");
        }

        f.disable_cli(cli, "auth expired", t0());
        let err = f
            .effective_mode(&a, cli, CommMode::Headless, false)
            .unwrap_err();
        assert_eq!(err.origin, ModeOrigin::CliDisabled);
        assert!(err.reason.contains("CLI type gemini"), "{err}");
        assert!(err.reason.contains("auth expired"), "{err}");

        f.force_agent(&a, "manual test", t0());
        let err = f
            .effective_mode(&a, cli, CommMode::Headless, false)
            .unwrap_err();
        assert_eq!(
            (err.wanted, err.origin),
            (CommMode::Tmux, ModeOrigin::AgentForced)
        );
        assert!(err.reason.contains("agent alpha is forced"), "{err}");
        assert!(err.reason.contains("manual test"), "{err}");
    }

    #[test]
    fn status_matches_the_http_shape() {
        let mut f = FallbackState::new();
        assert_eq!(
            serde_json::to_value(f.status()).unwrap(),
            json!({ "disabledCLIs": [], "forcedFallbacks": [] })
        );
        f.disable_cli(CliType::FactoryDroid, "operator", t0());
        f.auto_disable_cli(CliType::ClaudeCode, "doctor: binary missing", t0());
        f.auto_force_agent(&agent("beta"), "circuit agent:beta opened", later());
        f.force_agent(&agent("alpha"), "operator", t0());
        let json = serde_json::to_value(f.status()).unwrap();
        assert_eq!(
            json,
            json!({
                "disabledCLIs": [
                    { "cliType": "claude-code", "reason": "doctor: binary missing",
                      "since": "2025-01-31T12:00:00Z", "auto": true },
                    { "cliType": "factory-droid", "reason": "operator",
                      "since": "2025-01-31T12:00:00Z", "auto": false },
                ],
                "forcedFallbacks": [
                    { "agentId": "alpha", "reason": "operator",
                      "since": "2025-01-31T12:00:00Z", "auto": false },
                    { "agentId": "beta", "reason": "circuit agent:beta opened",
                      "since": "2025-01-31T12:05:00Z", "auto": true },
                ],
            })
        );
        let back: FallbackStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, f.status());
    }

    #[test]
    fn targets_round_trip_and_restore() {
        let mut f = FallbackState::new();
        let entry = Override {
            reason: "r".into(),
            since: t0(),
            auto: true,
        };
        for target in [Target::Cli(CliType::Codex), Target::Agent(agent("x-1"))] {
            let parsed = Target::parse(target.kind(), target.key()).unwrap();
            assert_eq!(parsed, target);
            f.restore(parsed, entry.clone());
            assert_eq!(f.get(&target), Some(&entry));
        }
        assert!(Target::parse("mode", "x").is_err());
        assert!(Target::parse("agent", "a b").is_err());
        assert!(Target::parse("cli", "codex-cli").is_err());
        assert!(f.auto_clear_agent(&agent("x-1")));
        assert!(f.auto_enable_cli(CliType::Codex));
    }
}
