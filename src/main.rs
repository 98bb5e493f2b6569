//! imgbuild's command line: parses the arguments, sets up the log, runs the command (`cli`)
//! and exits with the error's own code (0 ok, 1 a build/check/upload failed, 2 bad input or
//! usage).

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    let level = match (args.quiet, args.verbose) {
        (true, _) => "error",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMGBUILD_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("imgbuild={level},exec={level}"))
            }),
        )
        // Log lines share stderr with the progress spinner (see progress::Console).
        .with_writer(imgbuild::progress::Console::default)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    match cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
