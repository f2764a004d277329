//! CLI versions seen by the environment doctor.

use super::{now, Fields, PgStore};
use crate::{CliVersionRow, Result};
use sqlx::types::Json;

impl PgStore {
    pub(crate) async fn record_cli_version(
        &self,
        cli_type: &str,
        version: &str,
        agents: &[String],
    ) -> Result<()> {
        let at = now();
        sqlx::query(
            "INSERT INTO cli_versions (cli_type, version, first_seen_at, last_seen_at, agents) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (cli_type, version) DO UPDATE SET \
               last_seen_at = EXCLUDED.last_seen_at, agents = EXCLUDED.agents",
        )
        .bind(cli_type)
        .bind(version)
        .bind(at)
        .bind(at)
        .bind(Json(agents))
        .execute(&self.pool)
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
                Ok(CliVersionRow {
                    cli_type: f.get("cli_type")?,
                    version: f.get("version")?,
                    first_seen_at: f.get("first_seen_at")?,
                    last_seen_at: f.get("last_seen_at")?,
                    agents: f.json("agents")?,
                })
            })
            .collect()
    }
}
