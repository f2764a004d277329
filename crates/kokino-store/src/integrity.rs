//! Conversation integrity checks as set-based queries: each check is one statement over the
//! whole store (grouping and window functions), never one query per conversation.

use crate::db::{Fields, Query, Row};
use crate::{IntegrityFinding, IntegrityTotals, Result, Store};

/// Turns whose conversation is gone (possible only if rows were written with foreign keys off or
/// triggers disabled, by hand or by a restore tool; the check is cheap).
const ORPHANED_TURNS: &str = "SELECT t.turn_id, t.conversation_id FROM turns t \
     LEFT JOIN conversations c ON c.conversation_id = t.conversation_id \
     WHERE c.conversation_id IS NULL \
     ORDER BY t.conversation_id, t.turn_id";

/// Sequence gaps or duplicates: a clean conversation has seq 1..n exactly once each.
const BAD_SEQUENCES: &str = "SELECT conversation_id, COUNT(*) AS n, COUNT(DISTINCT seq) AS d, \
            MIN(seq) AS lo, MAX(seq) AS hi \
     FROM turns GROUP BY conversation_id \
     HAVING COUNT(*) <> COUNT(DISTINCT seq) OR MIN(seq) <> 1 OR MAX(seq) <> COUNT(*) \
     ORDER BY conversation_id";

/// The first turn of a conversation must be the user's.
const FIRST_TURN_NOT_USER: &str = "SELECT t.conversation_id, t.turn_id, t.role FROM turns t \
     JOIN (SELECT conversation_id, MIN(seq) AS s FROM turns GROUP BY conversation_id) m \
       ON m.conversation_id = t.conversation_id AND m.s = t.seq \
     WHERE t.role <> 'user' \
     ORDER BY t.conversation_id, t.turn_id";

/// Two assistant turns with no user turn between them (system turns are transparent: they
/// record failures, not answers).
const ASSISTANT_WITHOUT_USER: &str = "SELECT conversation_id, turn_id FROM ( \
       SELECT conversation_id, turn_id, role, seq, \
              LAG(role) OVER (PARTITION BY conversation_id ORDER BY seq) AS prev \
       FROM turns WHERE role <> 'system' \
     ) AS ordered WHERE role = 'assistant' AND prev = 'assistant' \
     ORDER BY conversation_id, seq";

/// Sessions pointing at a conversation that does not exist.
const DANGLING_SESSIONS: &str = "SELECT s.agent_id, s.conversation_id FROM sessions s \
     LEFT JOIN conversations c ON c.conversation_id = s.conversation_id \
     WHERE c.conversation_id IS NULL \
     ORDER BY s.agent_id";

/// One finding per row of `rows`, built by `finding` from the row's fields.
fn findings(
    rows: Vec<Row>,
    table: &'static str,
    finding: impl Fn(&Fields<'_>) -> Result<IntegrityFinding>,
) -> Result<Vec<IntegrityFinding>> {
    rows.iter()
        .map(|row| finding(&Fields::new(row, table)))
        .collect()
}

impl Store {
    /// Every integrity problem in the store (behavior.md, Conversations and integrity), except
    /// executions stuck `running`, which only the broker can judge (it knows what runs).
    pub async fn integrity_findings(&self) -> Result<Vec<IntegrityFinding>> {
        let read = |sql: &'static str| Query::new(sql).fetch_all(self.db.read());
        let mut out = findings(read(ORPHANED_TURNS).await?, "turns", |f| {
            Ok(IntegrityFinding {
                kind: "orphaned_turn".into(),
                conversation_id: f.text("conversation_id")?,
                turn_id: Some(f.text("turn_id")?),
                message: "turn belongs to a conversation that does not exist".into(),
            })
        })?;
        out.extend(findings(read(BAD_SEQUENCES).await?, "turns", |f| {
            let (n, d, lo, hi) = (f.int("n")?, f.int("d")?, f.int("lo")?, f.int("hi")?);
            let (kind, message) = if n != d {
                (
                    "sequence_duplicate",
                    format!("{} turns share a sequence number", n - d),
                )
            } else {
                ("sequence_gap", format!("{n} turns numbered {lo}..{hi}"))
            };
            Ok(IntegrityFinding {
                kind: kind.into(),
                conversation_id: f.text("conversation_id")?,
                turn_id: None,
                message,
            })
        })?);
        out.extend(findings(read(FIRST_TURN_NOT_USER).await?, "turns", |f| {
            Ok(IntegrityFinding {
                kind: "first_turn_not_user".into(),
                conversation_id: f.text("conversation_id")?,
                turn_id: Some(f.text("turn_id")?),
                message: format!("the first turn is a {} turn", f.text("role")?),
            })
        })?);
        out.extend(findings(
            read(ASSISTANT_WITHOUT_USER).await?,
            "turns",
            |f| {
                Ok(IntegrityFinding {
                    kind: "assistant_without_user".into(),
                    conversation_id: f.text("conversation_id")?,
                    turn_id: Some(f.text("turn_id")?),
                    message: "two assistant turns without a user turn between them".into(),
                })
            },
        )?);
        out.extend(findings(read(DANGLING_SESSIONS).await?, "sessions", |f| {
            Ok(IntegrityFinding {
                kind: "session_without_conversation".into(),
                conversation_id: f.text("conversation_id")?,
                turn_id: None,
                message: format!(
                    "agent {}'s session points at a missing conversation",
                    f.text("agent_id")?
                ),
            })
        })?);
        Ok(out)
    }

    /// Counts of conversations and turns, for `GET /api/integrity/stats`.
    pub async fn integrity_totals(&self) -> Result<IntegrityTotals> {
        // One snapshot for both statements, so the totals and the per-agent counts agree.
        let mut tx = self.db.read_tx().await?;
        let row = Query::new(
            "SELECT (SELECT COUNT(*) FROM conversations) AS conversations, \
                    (SELECT COUNT(*) FROM turns) AS turns, \
                    (SELECT COUNT(*) FROM turns WHERE role = 'user') AS user_turns, \
                    (SELECT COUNT(*) FROM turns WHERE role = 'assistant') AS assistant_turns, \
                    (SELECT COUNT(*) FROM turns WHERE role = 'system') AS system_turns",
        )
        .fetch_one(&mut tx)
        .await?;
        let by_agent = Query::new(
            "SELECT agent_id, COUNT(*) AS n FROM conversations GROUP BY agent_id ORDER BY agent_id",
        )
        .fetch_all(&mut tx)
        .await?;
        tx.commit().await?;
        let conversations_by_agent = by_agent
            .iter()
            .map(|r| {
                let f = Fields::new(r, "conversations");
                Ok((f.text("agent_id")?, f.count("n")?))
            })
            .collect::<Result<Vec<_>>>()?;
        let f = Fields::new(&row, "turns");
        Ok(IntegrityTotals {
            conversations: f.count("conversations")?,
            turns: f.count("turns")?,
            user_turns: f.count("user_turns")?,
            assistant_turns: f.count("assistant_turns")?,
            system_turns: f.count("system_turns")?,
            conversations_by_agent,
        })
    }

    /// Repairs what is safe: deletes orphaned turns and sessions pointing nowhere, renumbers
    /// conversations whose sequence has gaps (order kept). Returns (rows deleted, conversations
    /// renumbered).
    pub async fn integrity_repair(&self) -> Result<(u64, u64)> {
        let mut tx = self.db.write_tx().await?;
        // The repair takes the write locks of every agent it is about to touch, like any other
        // writer of their conversations (on SQLite the write transaction holds the one lock
        // already). Orphaned turns need no lock: no store operation writes a turn of a missing
        // conversation.
        let gapped = Query::new(
            "SELECT t.conversation_id, c.agent_id FROM turns t \
             JOIN conversations c ON c.conversation_id = t.conversation_id \
             GROUP BY t.conversation_id, c.agent_id \
             HAVING COUNT(*) = COUNT(DISTINCT t.seq) \
                AND (MIN(t.seq) <> 1 OR MAX(t.seq) <> COUNT(*))",
        )
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(|row| {
            let f = Fields::new(row, "turns");
            Ok((f.text("conversation_id")?, f.text("agent_id")?))
        })
        .collect::<Result<Vec<_>>>()?;
        let dangling_agents = Query::new(
            "SELECT s.agent_id FROM sessions s WHERE NOT EXISTS \
               (SELECT 1 FROM conversations c WHERE c.conversation_id = s.conversation_id)",
        )
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(|row| Fields::new(row, "sessions").text("agent_id"))
        .collect::<Result<Vec<_>>>()?;
        let agents: Vec<&str> = gapped
            .iter()
            .map(|(_, agent)| agent.as_str())
            .chain(dangling_agents.iter().map(String::as_str))
            .collect();
        tx.lock_agents(&agents).await?;

        let orphans = Query::new(
            "DELETE FROM turns WHERE NOT EXISTS \
               (SELECT 1 FROM conversations c WHERE c.conversation_id = turns.conversation_id)",
        )
        .execute(&mut tx)
        .await?;
        let dangling = Query::new(
            "DELETE FROM sessions WHERE NOT EXISTS \
               (SELECT 1 FROM conversations c WHERE c.conversation_id = sessions.conversation_id)",
        )
        .execute(&mut tx)
        .await?;
        // Renumber gapped (not duplicated) conversations in two steps, first far above any real
        // number, because the UNIQUE (conversation_id, seq) constraint is checked row by row
        // during an UPDATE and a direct renumbering could collide midway. A turn appended
        // between the query above and the lock is renumbered with the others, in order.
        for (conversation_id, _) in &gapped {
            Query::new("UPDATE turns SET seq = seq + 1000000000 WHERE conversation_id = $1")
                .bind(conversation_id)
                .execute(&mut tx)
                .await?;
            // The ranks are computed before any row changes, so the new numbers follow the
            // original order.
            Query::new(
                "UPDATE turns SET seq = r.rn FROM ( \
                   SELECT turn_id, ROW_NUMBER() OVER (ORDER BY seq) AS rn \
                   FROM turns WHERE conversation_id = $1) AS r \
                 WHERE turns.turn_id = r.turn_id",
            )
            .bind(conversation_id)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok((orphans + dangling, gapped.len() as u64))
    }
}
