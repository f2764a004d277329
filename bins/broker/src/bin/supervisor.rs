//! `kokino-supervisor`: the supervisor the broker runs under every tmux pane
//! (`kokino_exec::supervisor`), and the spawner that starts every headless CLI
//! (`kokino_exec::spawner`), as a small binary of their own.
//!
//! The broker binary can play both roles itself (`kokino-broker --kokino-supervise …`,
//! `kokino-broker --kokino-spawner …`), and does when this binary is not next to it. A
//! supervisor is started once per pane (and per headless execution when the spawner cannot
//! take it), though, and the broker's binary is large: loading and relocating it cost about a
//! millisecond of CPU per start more than this one does. The command line is the same either
//! way.

#![forbid(unsafe_code)]

use kokino_exec::spawner::{run_spawner, SPAWNER_FLAG};
use kokino_exec::supervisor::{run_supervisor, GUARD_FLAG, SUPERVISE_FLAG};

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some(flag) if flag == SUPERVISE_FLAG || flag == GUARD_FLAG => {
            run_supervisor(flag, &argv[2..])
        }
        Some(flag) if flag == SPAWNER_FLAG => run_spawner(&argv[2..]),
        _ => {
            eprintln!(
                "kokino-supervisor: started by kokino-broker under each CLI; \
                 usage: kokino-supervisor {SUPERVISE_FLAG} [options] -- <program> [args…] \
                 | kokino-supervisor {SPAWNER_FLAG} --socket-fd N [options]"
            );
            std::process::exit(2)
        }
    }
}
