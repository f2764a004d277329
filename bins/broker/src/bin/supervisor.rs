//! `kokino-supervisor`: the supervisor the broker runs under every CLI
//! (`kokino_exec::supervisor`), as a small binary of its own.
//!
//! The broker binary can play this role itself (`kokino-broker --kokino-supervise …`), and does
//! when this binary is not next to it. It is started once per execution, though, and the
//! broker's binary is large: loading and relocating it cost about a millisecond of CPU per
//! execution more than this one does. The command line is the same either way.

#![forbid(unsafe_code)]

use kokino_exec::supervisor::{run_supervisor, GUARD_FLAG, SUPERVISE_FLAG};

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some(flag) if flag == SUPERVISE_FLAG || flag == GUARD_FLAG => {
            run_supervisor(flag, &argv[2..])
        }
        _ => {
            eprintln!(
                "kokino-supervisor: started by kokino-broker under each CLI; \
                 usage: kokino-supervisor {SUPERVISE_FLAG} [options] -- <program> [args…]"
            );
            std::process::exit(2)
        }
    }
}
