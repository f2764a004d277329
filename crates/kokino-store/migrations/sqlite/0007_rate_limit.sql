-- Who handles an agent's rate limits: NULL or 'stop' (the broker stops the run at the first
-- signal), 'cli' (the CLI retries on its own). See kokino_core::RateLimitPolicy.
ALTER TABLE agents ADD COLUMN rate_limit TEXT;
