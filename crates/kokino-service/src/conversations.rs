//! Conversations and turns as stored, and their deletion.

use kokino_core::{AgentId, Conversation, Turn};

use crate::{Broker, ServiceError};

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// The agent's current conversation (its session's), else its newest one.
pub(crate) async fn current(b: &Broker, agent_id: &str) -> Result<(Conversation, Vec<Turn>)> {
    let id = crate::agents::existing(b, agent_id).await?;
    let store = &b.inner.store;
    let conv_id = match store.get_session(&id).await? {
        Some(s) => Some(s.conversation_id),
        None => store
            .list_conversations(&id)
            .await?
            .into_iter()
            .next()
            .map(|c| c.conversation_id),
    };
    let conv_id = conv_id
        .ok_or_else(|| ServiceError::ConversationNotFound(format!("(none yet for agent {id})")))?;
    get(b, &conv_id).await
}

/// The agent's conversations, newest first.
pub(crate) async fn list(b: &Broker, agent_id: &str) -> Result<Vec<Conversation>> {
    let id = crate::agents::existing(b, agent_id).await?;
    Ok(b.inner.store.list_conversations(&id).await?)
}

/// One conversation with its turns.
pub(crate) async fn get(b: &Broker, conversation_id: &str) -> Result<(Conversation, Vec<Turn>)> {
    b.inner
        .store
        .get_conversation(conversation_id)
        .await?
        .ok_or_else(|| ServiceError::ConversationNotFound(conversation_id.to_owned()))
}

/// One turn of one of the agent's conversations.
pub(crate) async fn turn(b: &Broker, agent_id: &str, turn_id: &str) -> Result<Turn> {
    let id: AgentId = crate::agents::existing(b, agent_id).await?;
    b.inner
        .store
        .get_turn(&id, turn_id)
        .await?
        .ok_or_else(|| ServiceError::TurnNotFound(turn_id.to_owned()))
}

/// Deletes a conversation. Refused while an execution of it is running: deleting the rows
/// under a live run would lose its answer.
pub(crate) async fn delete(b: &Broker, conversation_id: &str) -> Result<()> {
    let (conv, _) = get(b, conversation_id).await?;
    if let Some(r) = b.inner.running(&conv.agent_id) {
        if let Some(exec) = b.inner.store.get_execution(&r.execution_id).await? {
            if exec.conversation_id == conversation_id {
                return Err(ServiceError::InvalidState(format!(
                    "conversation {conversation_id} has a running execution; cancel it first"
                )));
            }
        }
    }
    b.inner.store.delete_conversation(conversation_id).await?;
    Ok(())
}
