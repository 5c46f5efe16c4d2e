//! The `migtrace` command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "migtrace",
    version,
    about = "Measure VM live migration precisely: phase timelines with eBPF, downtime every way"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs into this kernel, attach a uprobe and a tracepoint to
    /// migtrace itself, and check that their events arrive (needs root).
    Selftest {
        /// Triggers per probe.
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Selftest { count } => {
            let r = migtrace::probe::selftest::run(count).await?;
            println!(
                "selftest: {} uprobe and {} tracepoint events delivered, {} lost, worst delivery latency {:.1} ms",
                r.uprobe_events,
                r.syscall_events,
                r.lost,
                r.max_latency_ns as f64 / 1e6
            );
            Ok(())
        }
    }
}
