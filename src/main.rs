//! The `basalt` binary: parses etcd's flags, then either serves (the default) or runs one of the
//! offline tools. Everything it does lives in the crates; this file only wires them.

mod config;

use clap::Parser;
use config::{normalize_go_flags, Cli, Command, ServerFlags};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_go_flags(std::env::args())) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let outcome = match cli.command {
        None if cli.server.version => {
            print_version();
            Ok(())
        }
        None => serve(cli.server),
        Some(Command::DumpLog(flags)) => dump_log(flags),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("basalt: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_version() {
    println!("Basalt Version: {}", env!("CARGO_PKG_VERSION"));
    println!("etcd API Version: 3.5");
    println!(
        "OS/Arch: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
}

fn serve(flags: ServerFlags) -> Result<(), String> {
    let _ = flags;
    Err("serving is not wired yet".into())
}

fn dump_log(flags: config::DumpLogFlags) -> Result<(), String> {
    let _ = flags;
    Err("dump-log is not wired yet".into())
}
