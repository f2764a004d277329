//! Agent registration, lookup and deletion.

use kokino_core::{AgentId, AgentRecord, AgentSpec, CliType, CommMode};

use crate::model::AgentView;
use crate::sessions::session_view;
use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Registers (or updates) an agent after checking what the store cannot: the working
/// directory exists, limits are positive, environment keys and values are valid.
pub(crate) async fn register(b: &Broker, spec: AgentSpec) -> Result<AgentRecord> {
    register_checked(b, spec, true).await
}

/// As [`register`]; `check_cwd` false skips the `cwd` check for an agent whose home is another
/// broker (the directory is on that broker's machine).
pub(crate) async fn register_checked(
    b: &Broker,
    spec: AgentSpec,
    check_cwd: bool,
) -> Result<AgentRecord> {
    if check_cwd {
        validate(&spec)?;
    } else {
        validate(&AgentSpec {
            cwd: None,
            ..spec.clone()
        })?;
    }
    b.inner.cfg.check_agent(&spec)?;
    Ok(b.inner.store.upsert_agent(&spec).await?)
}

fn validate(spec: &AgentSpec) -> Result<()> {
    if let Some(cwd) = &spec.cwd {
        if !std::path::Path::new(cwd).is_dir() {
            return Err(ServiceError::invalid(
                "cwd",
                format!("cwd {cwd:?} does not exist or is not a directory"),
            ));
        }
    }
    for (field, value) in [
        ("timeoutMs", spec.timeout_ms),
        ("maxMemoryMB", spec.max_memory_mb),
    ] {
        if value == Some(0) {
            return Err(ServiceError::invalid(
                field,
                format!("{field} must be greater than 0"),
            ));
        }
    }
    if let Some(key) = spec
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(ServiceError::invalid(
            "env",
            format!("env key {key:?} is not a valid environment variable name"),
        ));
    }
    if spec.env.values().any(|v| v.contains('\0')) {
        return Err(ServiceError::invalid(
            "env",
            "env values must not contain NUL bytes",
        ));
    }
    Ok(())
}

/// Registered agents, optionally only those of one CLI type and/or mode.
pub(crate) async fn list(
    b: &Broker,
    cli_type: Option<CliType>,
    comm_mode: Option<CommMode>,
) -> Result<Vec<AgentRecord>> {
    let mut agents = b.inner.store.list_agents().await?;
    agents.retain(|a| {
        cli_type.is_none_or(|t| a.spec.cli_type == t)
            && comm_mode.is_none_or(|m| a.spec.comm_mode == m)
    });
    Ok(agents)
}

/// The agent's record, or `AgentNotFound`.
pub(crate) async fn record(b: &Broker, id: &AgentId) -> Result<AgentRecord> {
    b.inner
        .store
        .get_agent(id)
        .await?
        .ok_or_else(|| ServiceError::AgentNotFound(id.to_string()))
}

/// Parses the id and checks that the agent exists.
pub(crate) async fn existing(b: &Broker, agent_id: &str) -> Result<AgentId> {
    let id = AgentId::parse(agent_id)?;
    record(b, &id).await?;
    Ok(id)
}

/// The agent with its session, breaker, fallback override and effective mode.
pub(crate) async fn view(b: &Broker, agent_id: &str) -> Result<AgentView> {
    let id = AgentId::parse(agent_id)?;
    let record = record(b, &id).await?;
    let session = b.inner.store.get_session(&id).await?.map(session_view);
    let res = &b.inner.resilience;
    let cli = record.spec.cli_type;
    let tmux = b.inner.tmux_available();
    let effective_mode = res
        .with_fallback(|f| f.effective_mode(&id, cli, record.spec.comm_mode, tmux))
        .map(|e| Some(e.mode))
        .unwrap_or(None);
    let circuit = res
        .circuits()
        .into_iter()
        .find(|c| c.agent_id.as_ref() == Some(&id))
        .and_then(|c| serde_json::to_value(c).ok());
    let executing = b.inner.running(&id).is_some();
    Ok(AgentView {
        fallback: res.agent_override(&id, cli),
        record,
        session,
        circuit,
        effective_mode,
        executing,
    })
}

/// Cancels a running execution, ends the session, and deletes the agent (with `purge`, its
/// conversations and logs too). Returns whether the agent existed.
pub(crate) async fn delete(b: &Broker, agent_id: &str, purge: bool) -> Result<bool> {
    let id = AgentId::parse(agent_id)?;
    crate::sessions::cancel_and_wait(b, &id).await;
    if let Some(tmux) = &b.inner.tmux {
        tmux.end_session(id.as_str()).await;
    }
    b.inner.store.end_session(&id).await?;
    let existed = b.inner.store.delete_agent(&id, purge).await?;
    crate::homes::forget(b, &id).await?;
    b.inner.locks.forget(&id);
    b.inner.resilience.forget_agent(&id).await;
    if purge {
        if let Err(e) = b.inner.logs.remove(&id) {
            tracing::warn!(error = %e, agent = %id, "could not delete the agent's logs");
        }
    }
    Ok(existed)
}
