//! Continuing a conversation in a new CLI session when the CLI cannot resume its own.
//!
//! The CLI keeps its session in its own files; the broker keeps the whole conversation in its
//! store. When the CLI reports that the session it was asked to resume does not exist (each
//! CLI's own words, recognised by its parser as `session_not_found`), or when a request asks for
//! it (`"rehydrate": true`), the run starts a new CLI session whose first prompt carries the
//! stored turns (`kokino_cli::rehydration_prompt`, bounded), records the new session id as soon
//! as the CLI reports it, marks the execution (`rehydratedFrom` in the answer turn's metadata)
//! and emits `SESSION_REHYDRATED`. The answer is then an ordinary one.

use kokino_cli::{rehydration_prompt, PastTurn};
use serde_json::json;

use super::run::Execution;
use crate::telemetry::event;
use crate::{Broker, ServiceError};

/// Turns the execution into the first run of a new CLI session seeded with the stored
/// conversation. `reason` says why (`session_not_found`, `requested`).
pub(super) async fn prepare(
    b: &Broker,
    exec: &mut Execution,
    reason: &str,
) -> Result<(), ServiceError> {
    let turns = match b
        .inner
        .store
        .get_conversation(&exec.session.conversation_id)
        .await?
    {
        Some((_, turns)) => turns,
        None => Vec::new(),
    };
    // The turns of this execution (its user turn, stored by `begin`) are the new message, not
    // history.
    let history: Vec<PastTurn<'_>> = turns
        .iter()
        .filter(|t| {
            t.metadata.get("executionId").and_then(|v| v.as_str())
                != Some(exec.execution_id.as_str())
        })
        .map(|t| PastTurn {
            role: t.role,
            content: &t.content,
        })
        .collect();
    let seeded = rehydration_prompt(&history, &exec.prompt);
    let previous = exec.resume_id.take();
    exec.fresh_id = uuid::Uuid::new_v4().to_string();
    exec.seeded_prompt = Some(seeded);
    exec.rehydrated_from = previous.clone();
    let (id, cli) = (&exec.agent.spec.agent_id, exec.agent.spec.cli_type);
    tracing::info!(agent = %id, previous = ?previous, reason, turns = history.len(), "continuing the conversation in a new CLI session");
    let mut ev = event("SESSION_REHYDRATED", Some(id.as_str()), Some(cli.as_str()));
    ev.metadata = json!({
        "executionId": exec.execution_id,
        "conversationId": exec.session.conversation_id,
        "previousSessionId": previous,
        "reason": reason,
        "turns": history.len(),
    });
    b.inner.events.emit(ev);
    Ok(())
}
