//! The per-agent execution lock.
//!
//! One execution per agent at a time, granted in arrival order. Waiters are woken by the release
//! itself (tokio's semaphore is a FIFO queue of wakers), never by polling, and a waiter that gives
//! up — by timeout or because its request was dropped — leaves the queue without a trace because
//! the acquire future is cancel-safe.
//!
//! Every grant carries a token. Operations that act on "the current run" (cancel, a late release
//! from a previous life) name the token they mean, so a stale one can never touch a newer run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::{AgentId, CoreError};

struct Slot {
    semaphore: Arc<Semaphore>,
    waiters: AtomicUsize,
    /// Token of the current holder, 0 when free.
    holder: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Slot {
            semaphore: Arc::new(Semaphore::new(1)),
            waiters: AtomicUsize::new(0),
            holder: AtomicU64::new(0),
        }
    }
}

/// The table of per-agent locks. Cheap to clone.
#[derive(Clone)]
pub struct AgentLocks {
    slots: Arc<Mutex<HashMap<AgentId, Arc<Slot>>>>,
    next_token: Arc<AtomicU64>,
}

/// Proof of holding an agent's lock. Dropping it releases the lock and wakes the next waiter.
pub struct LockGuard {
    slot: Arc<Slot>,
    token: u64,
    waited: Duration,
    _permit: OwnedSemaphorePermit,
}

impl LockGuard {
    pub fn token(&self) -> u64 {
        self.token
    }

    /// How long the holder waited in the queue before it got the lock.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether another caller waits for this agent's lock now.
    pub fn others_waiting(&self) -> bool {
        self.slot.waiters.load(Ordering::Acquire) > 0
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Only clear the holder if it is still us; the permit itself is released right after.
        let _ =
            self.slot
                .holder
                .compare_exchange(self.token, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// A snapshot of one agent's lock for the status endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockStatus {
    pub locked: bool,
    pub queue_length: usize,
    pub holder_token: Option<u64>,
}

struct WaiterCount<'a>(&'a AtomicUsize);

impl Drop for WaiterCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for AgentLocks {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentLocks {
    pub fn new() -> Self {
        Self {
            slots: Arc::default(),
            next_token: Arc::new(AtomicU64::new(1)),
        }
    }

    fn slot(&self, agent: &AgentId) -> Arc<Slot> {
        let mut slots = self.slots.lock().expect("lock table poisoned");
        slots
            .entry(agent.clone())
            .or_insert_with(|| Arc::new(Slot::new()))
            .clone()
    }

    /// Waits for the agent's lock for at most `wait`, in FIFO order.
    pub async fn acquire(&self, agent: &AgentId, wait: Duration) -> Result<LockGuard, CoreError> {
        let slot = self.slot(agent);
        let started = Instant::now();
        slot.waiters.fetch_add(1, Ordering::AcqRel);
        let counted = WaiterCount(&slot.waiters);
        let acquired = tokio::time::timeout(wait, slot.semaphore.clone().acquire_owned()).await;
        drop(counted);
        let permit = match acquired {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed, but a closed one means "no lock", not a panic.
            Ok(Err(_)) | Err(_) => {
                return Err(CoreError::LockTimeout {
                    agent_id: agent.to_string(),
                    waited_ms: started.elapsed().as_millis() as u64,
                })
            }
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        slot.holder.store(token, Ordering::Release);
        Ok(LockGuard {
            slot,
            token,
            waited: started.elapsed(),
            _permit: permit,
        })
    }

    pub fn status(&self, agent: &AgentId) -> LockStatus {
        let slots = self.slots.lock().expect("lock table poisoned");
        match slots.get(agent) {
            None => LockStatus {
                locked: false,
                queue_length: 0,
                holder_token: None,
            },
            Some(slot) => {
                let holder = slot.holder.load(Ordering::Acquire);
                LockStatus {
                    locked: holder != 0,
                    queue_length: slot.waiters.load(Ordering::Acquire),
                    holder_token: (holder != 0).then_some(holder),
                }
            }
        }
    }

    /// Whether `token` still names the current holder of the agent's lock.
    pub fn is_current(&self, agent: &AgentId, token: u64) -> bool {
        self.status(agent).holder_token == Some(token)
    }

    /// Drops the table entry of an agent that is gone, unless someone holds or waits for it.
    pub fn forget(&self, agent: &AgentId) {
        let mut slots = self.slots.lock().expect("lock table poisoned");
        if let Some(slot) = slots.get(agent) {
            if slot.holder.load(Ordering::Acquire) == 0 && slot.waiters.load(Ordering::Acquire) == 0
            {
                slots.remove(agent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let locks = AgentLocks::new();
        let a = id("a");
        let first = locks.acquire(&a, Duration::from_secs(1)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (locks, a, order) = (locks.clone(), a.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let g = locks.acquire(&a, Duration::from_secs(60)).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(g);
            }));
            // Let each task enqueue before the next one starts, so arrival order is defined.
            tokio::task::yield_now().await;
        }
        assert_eq!(locks.status(&a).queue_length, 5);
        assert!(first.others_waiting());
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(!locks.status(&a).locked);
        let alone = locks.acquire(&a, Duration::from_secs(1)).await.unwrap();
        assert!(!alone.others_waiting());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_times_out_leaves_the_queue() {
        let locks = AgentLocks::new();
        let a = id("a");
        let held = locks.acquire(&a, Duration::from_secs(1)).await.unwrap();
        let err = locks
            .acquire(&a, Duration::from_millis(300))
            .await
            .err()
            .unwrap();
        assert_eq!(
            err,
            CoreError::LockTimeout {
                agent_id: "a".into(),
                waited_ms: 300
            }
        );
        assert_eq!(locks.status(&a).queue_length, 0);
        let token = held.token();
        assert!(locks.is_current(&a, token));
        drop(held);
        assert!(!locks.is_current(&a, token));
        let next = locks.acquire(&a, Duration::from_millis(1)).await.unwrap();
        assert_ne!(next.token(), token, "tokens are never reused");
    }

    #[tokio::test(start_paused = true)]
    async fn different_agents_do_not_wait_for_each_other() {
        let locks = AgentLocks::new();
        let _a = locks
            .acquire(&id("a"), Duration::from_secs(1))
            .await
            .unwrap();
        let b = locks.acquire(&id("b"), Duration::ZERO).await;
        assert!(b.is_ok());
    }
}
