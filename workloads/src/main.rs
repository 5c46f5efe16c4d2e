//! `workloads`: the paper's guest load generators as one static binary.
//!
//! Exit codes: 0 done, 1 runtime failure (e.g. mlock refused), 2 bad spec or usage.

use std::{
    io::Write as _,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use clap::{Parser, Subcommand};
use workloads::{
    memory::MemoryError,
    runner::{RunOptions, run},
    spec::{self, Spec},
    verify::{CHECK_PORT, CHECK_REQUEST, CheckDesk},
};

#[derive(Parser)]
#[command(
    name = "workloads",
    version,
    about = "CPU, locked-pages and dirty-pages load generators (Salfner et al., DEPEND 2011)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Stop after this long (e.g. 30s); default: run until SIGINT/SIGTERM.
    #[arg(long, global = true, value_parser = duration)]
    duration: Option<Duration>,
    /// Interval of the JSON-line reports on stdout.
    #[arg(long, global = true, default_value = "1s", value_parser = duration)]
    report_every: Duration,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold CPU utilisation at PCT on each loaded CPU (duty cycle over 100 ms).
    Cpu {
        #[arg(long, value_name = "PCT")]
        load: String,
        /// Number of CPUs to load, one pinned thread each (default: all online).
        #[arg(long)]
        cpus: Option<String>,
    },
    /// Allocate SIZE, fill it with random data, mlock it and hold it.
    Locked {
        #[arg(long, value_name = "SIZE")]
        wset: String,
    },
    /// Every PERIOD modify the next BPC pages of a locked WSET region, FILL % of each.
    Dirty {
        #[arg(long, value_name = "SIZE")]
        wset: String,
        #[arg(long, value_name = "DURATION", requires = "bpc", conflicts_with = "rate")]
        period: Option<String>,
        #[arg(long, value_name = "PAGES", requires = "period")]
        bpc: Option<String>,
        /// Pages per second instead of --period/--bpc (10 ms cycles).
        #[arg(long, value_name = "PAGES_PER_S")]
        rate: Option<String>,
        #[arg(long, value_name = "PCT", default_value = "100")]
        fill: String,
    },
    /// Run several generators at once from one spec, e.g.
    /// `load=30,wset=256M,period=10ms,bpc=300,fill=100`.
    Run { spec: String },
    /// Guest agent: take the spec from `migtrace.workload=` on the kernel command line,
    /// report on the console as `migtrace-agent: {json}` lines, run forever.
    Agent {
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: String,
        /// UDP port for memory-check requests.
        #[arg(long, default_value_t = CHECK_PORT)]
        check_port: u16,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    spec::parse_duration("duration", s).map_err(|e| e.to_string())
}

fn spec_of(cmd: &Cmd) -> Result<Spec, spec::SpecError> {
    let text = match cmd {
        Cmd::Cpu { load, cpus } => match cpus {
            Some(c) => format!("load={load},cpus={c}"),
            None => format!("load={load}"),
        },
        Cmd::Locked { wset } => format!("wset={wset}"),
        Cmd::Dirty { wset, period, bpc, rate, fill } => match (period, bpc, rate) {
            (Some(p), Some(b), _) => format!("wset={wset},period={p},bpc={b},fill={fill}"),
            (_, _, Some(r)) => format!("wset={wset},rate={r},fill={fill}"),
            _ => {
                return Err(spec::SpecError::Inconsistent("dirty needs --rate, or --period and --bpc".into()));
            }
        },
        Cmd::Run { spec } => spec.clone(),
        Cmd::Agent { .. } => unreachable!("the agent reads its spec from the kernel command line"),
    };
    Spec::parse(&text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = RunOptions { duration: cli.duration, report_every: cli.report_every, ..RunOptions::default() };
    if let Cmd::Agent { cmdline, check_port } = &cli.command {
        agent(cmdline, *check_port, &opts);
    }
    let spec = match spec_of(&cli.command) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("workloads: bad spec: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("workloads: cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let stdout = std::io::stdout();
    let mut emit = |v: serde_json::Value| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    };
    match run(&spec, &opts, stop, &mut emit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ MemoryError::TooLarge { .. }) => {
            eprintln!("workloads: bad spec: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("workloads: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The lab guest's agent. It runs as PID 1 of the guest, so it never returns: errors are
/// reported on the console and the guest stays up (reachable for ping and migration).
fn agent(cmdline_path: &str, check_port: u16, opts: &RunOptions) -> ! {
    let say = |v: serde_json::Value| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "migtrace-agent: {v}");
        let _ = out.flush();
    };
    let cmdline = std::fs::read_to_string(cmdline_path).unwrap_or_default();
    let text = cmdline.split_whitespace().find_map(|w| w.strip_prefix("migtrace.workload=")).unwrap_or("idle");
    let desk = Arc::new(CheckDesk::default());
    let listener_desk = desk.clone();
    std::thread::spawn(move || {
        if let Err(e) = answer_memory_checks(&listener_desk, check_port) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "migtrace-agent: {}", serde_json::json!({"event": "error", "message": e}));
        }
    });
    match Spec::parse(text) {
        Ok(spec) => {
            say(serde_json::json!({"event": "start", "spec": spec.to_string()}));
            let stop = Arc::new(AtomicBool::new(false));
            let mut emit = |v: serde_json::Value| say(v);
            let opts = RunOptions { checks: Some(desk), ..opts.clone() };
            if let Err(e) = run(&spec, &opts, stop, &mut emit) {
                say(serde_json::json!({"event": "error", "message": e.to_string()}));
            }
        }
        Err(e) => say(serde_json::json!({"event": "error", "message": format!("bad spec {text:?}: {e}")})),
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Answers memory-check requests (`migtrace-memory-check NONCE` on UDP `port`, by
/// default [`CHECK_PORT`]) with the check of the working set, as JSON, to the sender and
/// on the console. The workload's own thread runs the check between two cycles.
fn answer_memory_checks(desk: &CheckDesk, port: u16) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", port))
        .map_err(|e| format!("memory checks unavailable: UDP port {port}: {e}"))?;
    let mut buf = [0u8; 256];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
        let text = String::from_utf8_lossy(&buf[..n]);
        let Some(nonce) = text.strip_prefix(CHECK_REQUEST) else { continue };
        let reply = match desk.request(Duration::from_secs(10)) {
            Some(check) => serde_json::json!({"event": "memory_check", "nonce": nonce.trim(), "memory_check": check}),
            None => serde_json::json!({"event": "memory_check", "nonce": nonce.trim(),
                "error": "the workload did not answer within 10 s"}),
        };
        let _ = socket.send_to(reply.to_string().as_bytes(), peer);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "migtrace-agent: {reply}");
        let _ = out.flush();
    }
}
