//! `tunnel server ...` / `tunnel client ...`: see `tunnel --help` and `TUNNEL.md`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    pool_tunnel::main()
}
