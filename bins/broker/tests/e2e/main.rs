//! The broker's end-to-end tests, one test binary with a module per area (linking one binary
//! instead of one per file saves minutes on a small machine). Helpers are in `common/`.

mod common;

mod alert_routing;
mod bad_input;
mod cluster;
mod crash_safety;
mod daemons;
mod deploy;
mod docs;
mod environment;
mod execution;
mod hardening;
mod homes;
mod lifecycle;
mod logs;
mod real_cli;
mod real_tui;
mod rehydration;
mod resilience;
mod runbooks;
mod shadow_mode;
mod slo;
mod status_page;
mod supervision;
mod tmux_mode;
mod write_path;
