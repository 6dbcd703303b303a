//! Try the lab without the `overlayd` binary's wiring:
//! `cargo run -p overlayd-lab --example lab -- up --name x` (as root). The daemon binary
//! is `$OVERLAYD_BIN`, else `overlayd` from `PATH`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use overlayd_lab::LabCommand;

#[derive(Debug, Parser)]
#[command(name = "lab", about = "overlayd lab without overlayd")]
struct Cli {
    #[command(subcommand)]
    command: LabCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let bin =
        std::env::var_os("OVERLAYD_BIN").map_or_else(|| PathBuf::from("overlayd"), PathBuf::from);
    match overlayd_lab::run(cli.command, bin) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
