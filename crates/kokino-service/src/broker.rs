//! The facade: [`Broker`]'s public methods are one-line calls into the module that owns each
//! concern (agents, execution, sessions, conversations, supervision, resilience, shadow mode,
//! environment, integrity, SLOs, maintenance, health, shutdown).

use std::sync::Arc;

use kokino_core::breaker::{CircuitStatus, Scope};
use kokino_core::clock::{SharedClock, SystemClock};
use kokino_core::fallback::FallbackStatus;
use kokino_core::{
    AgentId, AgentRecord, AgentSpec, CliType, CommMode, Conversation, SessionRecord, Turn,
};
use kokino_doctor::EnvironmentReport;
use kokino_logs::AgentLogs;
use kokino_store::{CliVersionRow, ShadowResult, Store};
use tokio::sync::mpsc;

use crate::integrity::{IntegrityCleanup, IntegrityReport, IntegrityStats};
use crate::model::*;
use crate::shadow::{Decision, Mismatch, ShadowMetrics};
use crate::slo::{AgentFailures, AgentLatency, CliFailures, SloStatus};
use crate::state::Inner;
use crate::{
    agents, conversations, environment, execution, health, integrity, maintenance, recovery,
    resilience, sessions, shadow, shutdown, slo, supervision, ServiceConfig, ServiceError,
};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The broker's application service: every operation of the broker's API, independent of the
/// transport that offers it.
/// Cheap to clone (all clones share one state).
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

impl Broker {
    /// Starts the service on an open store: recovers what a previous life left running, then
    /// starts the event writer.
    pub async fn start(store: Store, cfg: ServiceConfig) -> Result<Self> {
        Self::start_with_clock(store, cfg, Arc::new(SystemClock)).await
    }

    /// As [`Broker::start`], with the clock that time-based maintenance reads (tests pass a
    /// clock that follows tokio's paused time).
    pub async fn start_with_clock(
        store: Store,
        cfg: ServiceConfig,
        clock: SharedClock,
    ) -> Result<Self> {
        let inner = Arc::new(Inner::open(store, cfg, clock).await?);
        let broker = Broker { inner };
        recovery::recover_interrupted(&broker).await?;
        crate::homes::start_liveness(&broker).await?;
        Ok(broker)
    }

    /// The store the broker writes to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The settings the broker runs with.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.cfg
    }

    // Agents.

    /// Registers (or updates) an agent. The working directory must exist: finding out at the
    /// first execute would be later and more confusing.
    pub async fn register_agent(&self, spec: AgentSpec) -> Result<AgentRecord> {
        agents::register(self, spec).await
    }

    /// Registers (or updates) an agent with a home (several brokers): `home` names the broker
    /// that runs it (default: the home it has, else this broker), `portable` declares that it
    /// may be re-homed where its `cwd` does not exist.
    pub async fn register_agent_at(
        &self,
        spec: AgentSpec,
        home: Option<String>,
        portable: Option<bool>,
    ) -> Result<AgentRecord> {
        crate::homes::register(self, spec, home, portable).await
    }

    /// Where a request for the agent is served (several brokers): here, or forwarded to its
    /// home. `failover` (executions) takes over an agent whose home is dead when it can run here.
    pub async fn route(&self, agent_id: &str, failover: bool) -> Result<crate::homes::Route> {
        crate::homes::route(self, agent_id, failover).await
    }

    /// Moves the agent to another broker, cancelling what runs; see `POST /agents/{id}/move`.
    pub async fn move_agent(
        &self,
        agent_id: &str,
        to: &str,
        end_session: bool,
    ) -> Result<crate::homes::MoveResult> {
        crate::homes::move_agent(self, agent_id, to, end_session).await
    }

    /// The brokers and the agents' homes.
    pub async fn cluster_view(&self) -> Result<crate::homes::ClusterView> {
        crate::homes::view(self).await
    }

    /// The other live brokers (instance id, address), for status endpoints that gather every
    /// broker's live facts.
    pub async fn peers(&self) -> Result<Vec<(String, String)>> {
        crate::homes::peers(self).await
    }

    /// This broker's instance id when agents have homes (several brokers), else `None`.
    pub fn home_instance(&self) -> Option<&str> {
        self.inner.homes.as_ref().map(|h| h.instance_id.as_str())
    }

    /// Registered agents, optionally only those of one CLI type and/or mode.
    pub async fn list_agents(
        &self,
        cli_type: Option<CliType>,
        comm_mode: Option<CommMode>,
    ) -> Result<Vec<AgentRecord>> {
        agents::list(self, cli_type, comm_mode).await
    }

    /// One agent with its session, breaker, fallback override and effective mode.
    pub async fn get_agent(&self, agent_id: &str) -> Result<AgentView> {
        agents::view(self, agent_id).await
    }

    /// Cancels a running execution, ends the session, and deletes the agent (with `purge`, its
    /// conversations too). Returns whether the agent existed.
    pub async fn delete_agent(&self, agent_id: &str, purge: bool) -> Result<bool> {
        agents::delete(self, agent_id, purge).await
    }

    // Execution.

    /// Runs one prompt on an agent and answers with the CLI's answer. `progress`, when given,
    /// receives queue, start and stream events as they happen (for streaming clients).
    pub async fn execute(
        &self,
        agent_id: &str,
        req: ExecuteRequest,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Result<ExecuteResponse> {
        execution::execute(self, agent_id, req, progress).await
    }

    /// Cancels the agent's running execution, if any. Returns at once; the signal escalation
    /// continues in the execution's own task.
    pub fn cancel(&self, agent_id: &str) -> Result<CancelResult> {
        sessions::cancel(self, agent_id)
    }

    // Sessions.

    /// Cancels what runs and forgets the CLI session: the next execute starts a new one.
    pub async fn end_session(&self, agent_id: &str) -> Result<EndSessionResult> {
        sessions::end(self, agent_id).await
    }

    /// End-session for every agent that has a session or a running execution; returns how
    /// many sessions ended.
    pub async fn clear_sessions(&self) -> Result<usize> {
        sessions::clear_all(self).await
    }

    /// Every agent's session, lock and running execution.
    pub async fn sessions_status(&self) -> Result<Vec<SessionStatus>> {
        sessions::status(self).await
    }

    /// Ends sessions idle for longer than `stale_session_after` (the CLI session id stays in the
    /// conversation's history). Agents that are executing right now are left alone.
    pub async fn sweep_stale_sessions(&self) -> Result<Vec<SessionRecord>> {
        sessions::sweep_stale(self).await
    }

    // Conversations.

    /// The agent's current conversation (its session's), else its newest one.
    pub async fn current_conversation(&self, agent_id: &str) -> Result<(Conversation, Vec<Turn>)> {
        conversations::current(self, agent_id).await
    }

    /// The agent's conversations.
    pub async fn conversations(&self, agent_id: &str) -> Result<Vec<Conversation>> {
        conversations::list(self, agent_id).await
    }

    /// One conversation with its turns.
    pub async fn conversation(&self, conversation_id: &str) -> Result<(Conversation, Vec<Turn>)> {
        conversations::get(self, conversation_id).await
    }

    /// One turn of one of the agent's conversations.
    pub async fn turn(&self, agent_id: &str, turn_id: &str) -> Result<Turn> {
        conversations::turn(self, agent_id, turn_id).await
    }

    /// Deletes a conversation. Refused while an execution of it is running: deleting the rows
    /// under a live run would lose its answer.
    pub async fn delete_conversation(&self, conversation_id: &str) -> Result<()> {
        conversations::delete(self, conversation_id).await
    }

    // Supervision and logs.

    /// Live processes with their latest memory and CPU sample.
    pub fn processes_status(&self) -> Vec<ProcessStatus> {
        supervision::processes(self)
    }

    /// The last `lines` lines of the agent's log.
    pub async fn agent_logs(&self, agent_id: &str, lines: usize) -> Result<AgentLogTail> {
        supervision::log_tail(self, agent_id, lines).await
    }

    /// The agents' log files.
    pub fn logs(&self) -> &AgentLogs {
        &self.inner.logs
    }

    // Breakers and fallback.

    /// Every circuit breaker that has been used.
    pub fn circuits_status(&self) -> Vec<CircuitStatus> {
        self.inner.resilience.circuits()
    }

    /// Resets the agent's breaker; returns its previous state.
    pub async fn reset_agent_circuit(&self, agent_id: &str) -> Result<String> {
        resilience::reset_agent_circuit(self, agent_id).await
    }

    /// Resets a CLI type's breaker; returns its previous state.
    pub async fn reset_cli_circuit(&self, cli: CliType) -> Result<String> {
        let tmux = self.tmux_available();
        Ok(self.inner.resilience.reset(&Scope::Cli(cli), tmux).await)
    }

    /// The fallback overrides in force.
    pub fn fallback_status(&self) -> FallbackStatus {
        self.inner.resilience.fallback_status()
    }

    /// Disables a CLI type: its headless agents run through tmux until it is enabled again.
    pub async fn disable_cli(&self, cli: CliType, reason: &str) -> Result<()> {
        self.inner.resilience.disable_cli(cli, reason).await
    }

    /// Enables a disabled CLI type; returns whether it was disabled.
    pub async fn enable_cli(&self, cli: CliType) -> Result<bool> {
        self.inner.resilience.enable_cli(cli).await
    }

    /// Forces an agent to run through tmux. Refused when it could not run there: a fallback
    /// that refuses every request is worse than none.
    pub async fn force_agent(&self, agent_id: &str, reason: &str) -> Result<()> {
        resilience::force_agent(self, agent_id, reason).await
    }

    /// Clears the agent's fallback override; returns whether it had one.
    pub async fn clear_agent_fallback(&self, agent_id: &str) -> Result<bool> {
        let id = AgentId::parse(agent_id)?;
        self.inner.resilience.clear_agent(&id).await
    }

    /// Clears every fallback override; returns how many there were.
    pub async fn clear_all_fallbacks(&self) -> Result<usize> {
        self.inner.resilience.clear_all().await
    }

    /// Whether tmux can run agents on this host.
    pub fn tmux_available(&self) -> bool {
        self.inner.tmux_available()
    }

    // Shadow mode.

    /// Success rates, match rate and latency delta of shadow runs over the last `days` days.
    pub async fn shadow_metrics(&self, days: u32) -> Result<ShadowMetrics> {
        shadow::reports::metrics(self, days).await
    }

    /// The latest shadow runs whose answers differed.
    pub async fn shadow_mismatches(&self, limit: u32) -> Result<Vec<Mismatch>> {
        shadow::reports::mismatches(self, limit).await
    }

    /// The latest shadow runs whose `leg` (headless or tmux) failed.
    pub async fn shadow_failures(&self, leg: CommMode, limit: u32) -> Result<Vec<ShadowResult>> {
        shadow::reports::failures(self, leg, limit).await
    }

    /// The go/no-go for switching shadow agents to headless.
    pub async fn shadow_decision(&self) -> Result<Decision> {
        shadow::reports::decision(self).await
    }

    /// Moves every shadow agent to `to` (headless or tmux); returns how many changed.
    pub async fn shadow_disable_all(&self, to: CommMode) -> Result<usize> {
        shadow::reports::disable_all(self, to).await
    }

    // Environment doctor.

    /// The environment doctor's report for the given CLI type (all when `None`): the cached
    /// report (at most 10 s old) or a fresh run, as `freshness` asks; concurrent callers share
    /// one run. A run records the versions seen, the `ENV_*` events and metrics, and feeds the
    /// automatic CLI disable/enable of fallback.
    pub async fn environment(
        &self,
        cli: Option<CliType>,
        freshness: environment::Freshness,
    ) -> EnvironmentReport {
        environment::report(self, cli, freshness).await
    }

    /// The CLI versions the doctor has seen, with the agents that use them.
    pub async fn cli_versions(&self) -> Result<Vec<CliVersionRow>> {
        environment::cli_versions(self).await
    }

    // Integrity.

    /// Runs every integrity check; records events for what it finds and keeps the result for
    /// the integrity SLO.
    pub async fn integrity_check(&self) -> Result<IntegrityReport> {
        integrity::check(self).await
    }

    /// Counts over the stored conversations and turns.
    pub async fn integrity_stats(&self) -> Result<IntegrityStats> {
        integrity::stats(self).await
    }

    /// Repairs what is safe: deletes orphaned turns and dangling sessions, renumbers gapped
    /// conversations, marks stuck executions `interrupted`. Role-order problems are reported by
    /// the check but never rewritten: there is no safe way to guess the right order.
    pub async fn integrity_cleanup(&self) -> Result<IntegrityCleanup> {
        integrity::cleanup(self).await
    }

    // SLOs and queries.

    /// Availability, latency, correctness, integrity and resource SLOs now.
    pub async fn slo_status(&self) -> Result<SloStatus> {
        slo::status(self).await
    }

    /// Failures per CLI type over the last `hours` hours.
    pub async fn failures_by_cli(&self, hours: u32) -> Result<Vec<CliFailures>> {
        let since = slo::hours_ago(self, hours);
        Ok(slo::failures_by_cli(&self.inner.store, since).await?)
    }

    /// Failures per agent over the last `hours` hours.
    pub async fn failures_by_agent(&self, hours: u32) -> Result<Vec<AgentFailures>> {
        let since = slo::hours_ago(self, hours);
        Ok(slo::failures_by_agent(&self.inner.store, since).await?)
    }

    /// Latency per agent over the last `hours` hours.
    pub async fn latency_by_agent(&self, hours: u32) -> Result<Vec<AgentLatency>> {
        let since = slo::hours_ago(self, hours);
        Ok(slo::latency_by_agent(&self.inner.store, since).await?)
    }

    // Maintenance, health, shutdown.

    /// Deletes telemetry events older than `days` days; returns how many.
    pub async fn cleanup_events(&self, days: u32) -> Result<u64> {
        maintenance::cleanup_events(self, days).await
    }

    /// Starts the periodic jobs: the stale-session sweep (hourly by default), the pruning of
    /// old rotated logs and events (daily), the nightly integrity check, the periodic doctor.
    /// They stop when the broker shuts down.
    pub fn spawn_maintenance(&self) {
        maintenance::spawn(self)
    }

    /// Pings the store and records the answer in `kokino_store_up`, for the scrape that asked.
    /// The ping is bounded by two seconds: a database that hangs instead of refusing must not
    /// stall the scrape past Prometheus's timeout, which would hide the outage as a missing
    /// target instead of reporting it.
    pub async fn record_store_up(&self) -> bool {
        health::record_store_up(self).await
    }

    /// `ok`, or `degraded` with the reasons (the store cannot be reached).
    pub async fn health(&self) -> Health {
        health::health(self).await
    }

    /// This broker's id (changes at every start), as `GET /health` reports it.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Time since the broker started.
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// Whether [`Broker::shutdown`] has begun. Long-lived readers (the status page's event
    /// stream) end when it has, so that they do not hold the HTTP server's graceful shutdown open.
    pub fn is_shutting_down(&self) -> bool {
        shutdown::is_shutting_down(self)
    }

    /// Stops accepting executions, cancels the running ones (recorded as `cancelled`) and waits
    /// for them to finish, so that no CLI outlives the broker.
    pub async fn shutdown(&self) {
        shutdown::shutdown(self).await
    }
}
