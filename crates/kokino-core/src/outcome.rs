use serde::{Deserialize, Serialize};

use crate::ids::string_enum;
use crate::CoreError;
use std::fmt;
use std::str::FromStr;

string_enum!(
    /// Exactly one class per finished execution; breakers, SLOs and metrics all read it.
    OutcomeClass, UnknownOutcome, {
        Success => "success",
        CliError => "cli_error",
        AuthError => "auth_error",
        RateLimited => "rate_limited",
        Timeout => "timeout",
        Cancelled => "cancelled",
        SpawnError => "spawn_error",
        ResourceLimit => "resource_limit",
        Interrupted => "interrupted",
    }
);

impl OutcomeClass {
    /// Whether the class counts as a failure for an agent's circuit breaker.
    pub fn is_breaker_failure(self) -> bool {
        matches!(
            self,
            OutcomeClass::CliError
                | OutcomeClass::AuthError
                | OutcomeClass::Timeout
                | OutcomeClass::SpawnError
                | OutcomeClass::ResourceLimit
        )
    }

    /// Whether the class is eligible for the availability SLO at all.
    pub fn is_slo_eligible(self) -> bool {
        !matches!(
            self,
            OutcomeClass::Cancelled | OutcomeClass::RateLimited | OutcomeClass::Interrupted
        )
    }
}

/// Token usage as the CLIs report it, normalised to one shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
}
