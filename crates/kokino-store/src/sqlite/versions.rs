//! CLI versions seen by the environment doctor.

use chrono::{DateTime, Utc};

use super::{now, to_json_text, ts, Fields, SqliteStore};
use crate::{CliVersionRow, Result};

impl SqliteStore {
    pub(crate) async fn record_cli_version(
        &self,
        cli_type: &str,
        version: &str,
        agents: &[String],
    ) -> Result<()> {
        let at = ts(now());
        sqlx::query(
            "INSERT INTO cli_versions (cli_type, version, first_seen_at, last_seen_at, agents) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (cli_type, version) DO UPDATE SET \
               last_seen_at = excluded.last_seen_at, agents = excluded.agents",
        )
        .bind(cli_type)
        .bind(version)
        .bind(&at)
        .bind(&at)
        .bind(to_json_text(agents))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub(crate) async fn list_cli_versions(&self) -> Result<Vec<CliVersionRow>> {
        let rows = sqlx::query(
            "SELECT cli_type, version, first_seen_at, last_seen_at, agents FROM cli_versions \
             ORDER BY cli_type, last_seen_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let f = Fields::new(row, "cli_versions");
                let first: DateTime<Utc> = f.time("first_seen_at")?;
                Ok(CliVersionRow {
                    cli_type: f.get("cli_type")?,
                    version: f.get("version")?,
                    first_seen_at: first,
                    last_seen_at: f.time("last_seen_at")?,
                    agents: f.json("agents")?,
                })
            })
            .collect()
    }
}
