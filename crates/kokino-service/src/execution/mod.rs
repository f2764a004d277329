//! The execution path of behavior.md: validate, admit (mode, breakers, parking), wait for the
//! agent's lock (and, with several brokers, its lease), then run in a task of its own: persist
//! the user turn, run the leg(s), store the outcome, record telemetry, release, answer.
//!
//! * [`admit`] decides the mode and takes a breaker permit;
//! * [`lock`] waits for the per-agent lock and the cluster lease;
//! * [`run`] holds the per-execution context ([`run::Execution`]) and drives one run;
//! * [`runner`] turns an agent and a mode into a command for an executor and runs it;
//! * [`finish`] stores the outcome and turns it into the caller's answer.

mod admit;
mod finish;
mod lock;
mod rehydrate;
pub(crate) mod run;
pub(crate) mod runner;

use tokio::sync::{mpsc, oneshot};

use crate::model::{ExecuteRequest, ExecuteResponse, Progress};
use crate::{Broker, ServiceError};
use kokino_core::AgentId;

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Runs one prompt on an agent and answers with the CLI's answer. `progress`, when given,
/// receives queue, start and stream events as they happen (for streaming clients).
pub(crate) async fn execute(
    b: &Broker,
    agent_id: &str,
    req: ExecuteRequest,
    progress: Option<mpsc::UnboundedSender<Progress>>,
) -> Result<ExecuteResponse> {
    let entered = std::time::Instant::now();
    let id = AgentId::parse(agent_id)?;
    validate(b, &req)?;
    if crate::shutdown::is_shutting_down(b) {
        return Err(ServiceError::ShuttingDown);
    }
    let agent = crate::agents::record(b, &id).await?;
    let (mode, permit) = admit::admit(b, &agent)?;
    let (guard, lease) = lock::acquire(b, &agent, &req, progress.as_ref()).await?;
    let admitted = run::Admitted {
        request: run::Request {
            agent,
            mode,
            req,
            progress,
        },
        guard,
        lease,
        permit,
        entered,
    };
    // From here on the run belongs to its own task: a caller that disconnects does not stop
    // it, and its result is stored whatever happens to the request.
    let (tx, rx) = oneshot::channel();
    let this = b.clone();
    b.inner.tasks.spawn(async move {
        let _ = tx.send(run::run(&this, admitted).await);
    });
    rx.await.unwrap_or(Err(ServiceError::ShuttingDown))
}

/// What can be refused before touching the agent: an empty or oversize prompt, a zero timeout.
fn validate(b: &Broker, req: &ExecuteRequest) -> Result<()> {
    if req.prompt.trim().is_empty() {
        return Err(ServiceError::invalid(
            "prompt",
            "prompt must be a non-empty string",
        ));
    }
    let limit = b.inner.cfg.max_prompt_bytes;
    if req.prompt.len() > limit {
        return Err(ServiceError::PromptTooLarge {
            bytes: req.prompt.len(),
            limit,
        });
    }
    // A zero lock wait is meaningful ("fail at once if busy"); a zero run time is not.
    if req.timeout_ms == Some(0) {
        return Err(ServiceError::invalid(
            "timeoutMs",
            "timeoutMs must be greater than 0",
        ));
    }
    Ok(())
}
