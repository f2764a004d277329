//! The fake agent's tests, one test binary with a module per area. Helpers are in `common/`.

mod common;

mod continuity;
mod interactive;
mod process;
mod sessions;
mod shapes;
mod tokens;
