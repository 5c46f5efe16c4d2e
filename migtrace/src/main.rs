//! The `migtrace` command line.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_log(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        tokio::select! {
            result = cli::run(args) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", cli::error_line(&e));
                    ExitCode::FAILURE
                }
            },
            signal = cli::shutdown_signal() => {
                // Dropping the command's future tears down whatever it started (labs kill
                // their QEMUs and delete their namespace on drop); records already
                // written are on disk.
                eprintln!("\ninterrupted by {signal}: stopped, cleaned up; records written so far are kept");
                ExitCode::from(130)
            }
        }
    })
}
