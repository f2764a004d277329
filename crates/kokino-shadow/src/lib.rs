//! Shadow mode's comparison: are two answers to the same prompt the same answer?
//!
//! In shadow mode every execution runs twice, once headless and once in a tmux pane, and the two
//! answers are compared. Two runs of a language model never print byte-identical text, and the
//! pane adds a frame and escape codes, so the comparison has three steps:
//!
//! 1. **Normalise** both texts through the same chain of [`Normaliser`]s (timestamps, durations,
//!    whitespace, escape codes, optionally terminal decorations), so volatile tokens and layout
//!    are not counted as differences.
//! 2. **Exact match** of the normalised texts: similarity 1.0.
//! 3. Otherwise a **bounded-cost similarity**, `2·common characters / all characters`: exact
//!    (a bit-parallel longest common subsequence) for short texts, and for long ones a line diff
//!    whose changed hunks are re-compared by character, under a time budget so that pathological
//!    input cannot stall the caller. See [`Comparator::compare`].
//!
//! Everything here is pure: no file, process, socket or environment is touched, which is what
//! lets the service call it anywhere and the tests feed it anything. Running the legs and storing
//! the results belong to the service.

#![forbid(unsafe_code)]

mod compare;
pub mod normalise;
mod verdict;

pub use compare::{
    Comparator, Comparison, Method, DEFAULT_BUDGET, DEFAULT_CHAR_LIMIT, DEFAULT_DIFF_LIMIT,
    DEFAULT_THRESHOLD,
};
pub use normalise::{
    CollapseWhitespace, Normaliser, StripAnsi, StripDurations, StripTimestamps,
    StripTuiDecorations, Trim,
};
pub use verdict::{shadow_events, Leg, ShadowEvent, LATENCY_REGRESSION_MS};
