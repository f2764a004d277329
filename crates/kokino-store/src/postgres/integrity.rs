//! Conversation integrity checks as set-based queries: each check is one statement over the
//! whole store (grouping and window functions), never one query per conversation. The queries
//! are those of the SQLite backend, with the subquery aliases PostgreSQL requires.

use sqlx::Row;

use super::{lock_agents, Fields, PgStore};
use crate::{IntegrityFinding, IntegrityTotals, Result};

impl PgStore {
    pub(crate) async fn integrity_findings(&self) -> Result<Vec<IntegrityFinding>> {
        let mut out = Vec::new();
        // Turns whose conversation is gone (possible only if rows were written with foreign
        // keys or triggers disabled, by hand or by a restore tool; the check is cheap).
        for row in sqlx::query(
            "SELECT t.turn_id, t.conversation_id FROM turns t \
             LEFT JOIN conversations c ON c.conversation_id = t.conversation_id \
             WHERE c.conversation_id IS NULL \
             ORDER BY t.conversation_id, t.turn_id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let f = Fields::new(&row, "turns");
            out.push(IntegrityFinding {
                kind: "orphaned_turn".into(),
                conversation_id: f.get("conversation_id")?,
                turn_id: Some(f.get("turn_id")?),
                message: "turn belongs to a conversation that does not exist".into(),
            });
        }
        // Sequence gaps or duplicates: a clean conversation has seq 1..n exactly once each.
        for row in sqlx::query(
            "SELECT conversation_id, COUNT(*) AS n, COUNT(DISTINCT seq) AS d, MIN(seq) AS lo, \
                    MAX(seq) AS hi \
             FROM turns GROUP BY conversation_id \
             HAVING COUNT(*) <> COUNT(DISTINCT seq) OR MIN(seq) <> 1 OR MAX(seq) <> COUNT(*) \
             ORDER BY conversation_id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let f = Fields::new(&row, "turns");
            let (n, d, lo, hi): (i64, i64, i64, i64) =
                (f.get("n")?, f.get("d")?, f.get("lo")?, f.get("hi")?);
            let (kind, message) = if n != d {
                (
                    "sequence_duplicate",
                    format!("{} turns share a sequence number", n - d),
                )
            } else {
                ("sequence_gap", format!("{n} turns numbered {lo}..{hi}"))
            };
            out.push(IntegrityFinding {
                kind: kind.into(),
                conversation_id: f.get("conversation_id")?,
                turn_id: None,
                message,
            });
        }
        // The first turn of a conversation must be the user's.
        for row in sqlx::query(
            "SELECT t.conversation_id, t.turn_id, t.role FROM turns t \
             JOIN (SELECT conversation_id, MIN(seq) AS s FROM turns GROUP BY conversation_id) m \
               ON m.conversation_id = t.conversation_id AND m.s = t.seq \
             WHERE t.role <> 'user' \
             ORDER BY t.conversation_id, t.turn_id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let f = Fields::new(&row, "turns");
            let role: String = f.get("role")?;
            out.push(IntegrityFinding {
                kind: "first_turn_not_user".into(),
                conversation_id: f.get("conversation_id")?,
                turn_id: Some(f.get("turn_id")?),
                message: format!("the first turn is a {role} turn"),
            });
        }
        // Two assistant turns with no user turn between them (system turns are transparent:
        // they record failures, not answers).
        for row in sqlx::query(
            "SELECT conversation_id, turn_id FROM ( \
               SELECT conversation_id, turn_id, role, seq, \
                      LAG(role) OVER (PARTITION BY conversation_id ORDER BY seq) AS prev \
               FROM turns WHERE role <> 'system' \
             ) AS ordered WHERE role = 'assistant' AND prev = 'assistant' \
             ORDER BY conversation_id, seq",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let f = Fields::new(&row, "turns");
            out.push(IntegrityFinding {
                kind: "assistant_without_user".into(),
                conversation_id: f.get("conversation_id")?,
                turn_id: Some(f.get("turn_id")?),
                message: "two assistant turns without a user turn between them".into(),
            });
        }
        // Sessions pointing at a conversation that does not exist.
        for row in sqlx::query(
            "SELECT s.agent_id, s.conversation_id FROM sessions s \
             LEFT JOIN conversations c ON c.conversation_id = s.conversation_id \
             WHERE c.conversation_id IS NULL \
             ORDER BY s.agent_id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let f = Fields::new(&row, "sessions");
            let agent: String = f.get("agent_id")?;
            out.push(IntegrityFinding {
                kind: "session_without_conversation".into(),
                conversation_id: f.get("conversation_id")?,
                turn_id: None,
                message: format!("agent {agent}'s session points at a missing conversation"),
            });
        }
        Ok(out)
    }

    pub(crate) async fn integrity_totals(&self) -> Result<IntegrityTotals> {
        // One snapshot for both statements, so the totals and the per-agent counts agree.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM conversations) AS conversations, \
                    (SELECT COUNT(*) FROM turns) AS turns, \
                    (SELECT COUNT(*) FROM turns WHERE role = 'user') AS user_turns, \
                    (SELECT COUNT(*) FROM turns WHERE role = 'assistant') AS assistant_turns, \
                    (SELECT COUNT(*) FROM turns WHERE role = 'system') AS system_turns",
        )
        .fetch_one(&mut *tx)
        .await?;
        let by_agent = sqlx::query(
            "SELECT agent_id, COUNT(*) AS n FROM conversations GROUP BY agent_id ORDER BY agent_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let f = Fields::new(&row, "turns");
        let mut conversations_by_agent = Vec::new();
        for r in &by_agent {
            conversations_by_agent.push((
                r.try_get::<String, _>("agent_id")?,
                r.try_get::<i64, _>("n")?.max(0) as u64,
            ));
        }
        let n = |c: &str| -> Result<u64> { Ok(f.get::<i64>(c)?.max(0) as u64) };
        Ok(IntegrityTotals {
            conversations: n("conversations")?,
            turns: n("turns")?,
            user_turns: n("user_turns")?,
            assistant_turns: n("assistant_turns")?,
            system_turns: n("system_turns")?,
            conversations_by_agent,
        })
    }

    /// The safe repairs: delete orphaned turns and sessions pointing nowhere, renumber
    /// conversations whose sequence has gaps (order kept). Returns (deleted, repaired).
    pub(crate) async fn integrity_repair(&self) -> Result<(u64, u64)> {
        let mut tx = self.pool.begin().await?;
        // SQLite's single writer keeps appends out while the repair renumbers. Here the repair
        // takes the write locks of every agent it is about to touch, like any other writer of
        // their conversations, and keeps readers and other agents' writers running. Orphaned
        // turns need no lock: no store operation writes a turn of a missing conversation.
        let gapped: Vec<(String, String)> = sqlx::query_as(
            "SELECT t.conversation_id, c.agent_id FROM turns t \
             JOIN conversations c ON c.conversation_id = t.conversation_id \
             GROUP BY t.conversation_id, c.agent_id \
             HAVING COUNT(*) = COUNT(DISTINCT t.seq) \
                AND (MIN(t.seq) <> 1 OR MAX(t.seq) <> COUNT(*))",
        )
        .fetch_all(&mut *tx)
        .await?;
        let dangling_agents: Vec<String> = sqlx::query_scalar(
            "SELECT s.agent_id FROM sessions s WHERE NOT EXISTS \
               (SELECT 1 FROM conversations c WHERE c.conversation_id = s.conversation_id)",
        )
        .fetch_all(&mut *tx)
        .await?;
        let agents: Vec<&str> = gapped
            .iter()
            .map(|(_, agent)| agent.as_str())
            .chain(dangling_agents.iter().map(String::as_str))
            .collect();
        lock_agents(&mut tx, &agents).await?;

        let orphans = sqlx::query(
            "DELETE FROM turns t WHERE NOT EXISTS \
               (SELECT 1 FROM conversations c WHERE c.conversation_id = t.conversation_id)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let dangling = sqlx::query(
            "DELETE FROM sessions s WHERE NOT EXISTS \
               (SELECT 1 FROM conversations c WHERE c.conversation_id = s.conversation_id)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Renumber gapped (not duplicated) conversations in two steps, first far above any real
        // number, because PostgreSQL checks the UNIQUE (conversation_id, seq) constraint row by
        // row during an UPDATE and a direct renumbering could collide midway. A turn appended
        // between the query above and the lock is renumbered with the others, in order.
        for (conv, _) in &gapped {
            sqlx::query("UPDATE turns SET seq = seq + 1000000000 WHERE conversation_id = $1")
                .bind(conv)
                .execute(&mut *tx)
                .await?;
            // The ranks are computed before any row changes, so the new numbers follow the
            // original order.
            sqlx::query(
                "UPDATE turns SET seq = r.rn FROM ( \
                   SELECT turn_id, ROW_NUMBER() OVER (ORDER BY seq) AS rn \
                   FROM turns WHERE conversation_id = $1) AS r \
                 WHERE turns.turn_id = r.turn_id",
            )
            .bind(conv)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((orphans + dangling, gapped.len() as u64))
    }
}
