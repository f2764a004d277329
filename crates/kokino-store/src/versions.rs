//! CLI versions seen by the environment doctor.

use crate::db::{now, Arg, Fields, Query};
use crate::{CliVersionRow, Result, Store};

impl Store {
    /// Records that `version` of `cli_type` was seen now (first and last seen times are kept
    /// per distinct version), with the agents of that type.
    pub async fn record_cli_version(
        &self,
        cli_type: &str,
        version: &str,
        agents: &[String],
    ) -> Result<()> {
        Query::new(
            "INSERT INTO cli_versions (cli_type, version, first_seen_at, last_seen_at, agents) \
             VALUES ($1, $2, $3, $3, $4) \
             ON CONFLICT (cli_type, version) DO UPDATE SET \
               last_seen_at = EXCLUDED.last_seen_at, agents = EXCLUDED.agents",
        )
        .bind(cli_type)
        .bind(version)
        .bind(now())
        .bind(Arg::json(agents))
        .execute(self.db.write())
        .await?;
        Ok(())
    }

    /// Every version seen, by CLI type, most recently seen first.
    pub async fn list_cli_versions(&self) -> Result<Vec<CliVersionRow>> {
        Query::new(
            "SELECT cli_type, version, first_seen_at, last_seen_at, agents FROM cli_versions \
             ORDER BY cli_type, last_seen_at DESC",
        )
        .fetch_all(self.db.read())
        .await?
        .iter()
        .map(|row| {
            let f = Fields::new(row, "cli_versions");
            Ok(CliVersionRow {
                cli_type: f.text("cli_type")?,
                version: f.text("version")?,
                first_seen_at: f.time("first_seen_at")?,
                last_seen_at: f.time("last_seen_at")?,
                agents: f.json("agents")?,
            })
        })
        .collect()
    }
}
