use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = jitgate::cli::Cli::parse();
    match jitgate::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jitgate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
