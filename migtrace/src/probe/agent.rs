//! Per-host tracing agents: `migtrace agent` runs on each hypervisor host, traces that
//! host's QEMU for the domain ([`HostTracer`]) and answers the coordinating `migtrace`
//! over its stdin and stdout, one JSON object per line, whatever carries them (`ssh HOST
//! migtrace agent`, `ip netns exec NS migtrace agent`, or a pipe).
//!
//! Requests and answers:
//!
//! | request | answer |
//! | --- | --- |
//! | (on start) | `{"ready": {"host", "kernel", "version"}}` or `{"error"}` |
//! | `{"op": "clock"}` | `{"t": NS}`: the agent's CLOCK_MONOTONIC, for offset estimation |
//! | `{"op": "begin", "role": "source"\|"destination"}` | `{"ok": PID or null}` |
//! | `{"op": "answered", "ident": N, "since_ns": NS}` | `{"ok": bool}`: a probe reply to a request sent at or after NS (the coordinator's clock: the guest echoes its stamps) |
//! | `{"op": "finish"}` | `{"ok": HostTrace}` (the agent's clock) |
//! | `{"op": "quit"}` or end of input | the agent detaches and exits |
//!
//! Anything else is answered `{"error": "…"}`; diagnostics go to stderr. The coordinator
//! refuses an agent of another migtrace version, and neither side reads a line longer
//! than it needs: requests up to [`REQUEST_LIMIT`], answers up to [`ANSWER_LIMIT`], a
//! trace up to [`TRACE_LIMIT`].

use std::{process::Stdio, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use super::{
    host::{HostTrace, HostTracer, Role},
    tracer::TraceError,
};
use crate::{
    clock::{ClockSample, HostClock, OffsetEstimate, estimate_offset, monotonic_ns},
    sys::ssh::SshTarget,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("starting tracing agent `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tracing agent on {host}: {message}")]
    Agent { host: String, message: String },
    #[error(
        "tracing agent on {host} did not answer {what} within {timeout:?} (is migtrace installed there, and run as root?)"
    )]
    Timeout { host: String, what: String, timeout: Duration },
    #[error("tracing agent on {host} exited{stderr}")]
    Exited { host: String, stderr: String },
    #[error(
        "tracing agent on {host} is migtrace {theirs}, this is migtrace {ours}: install migtrace {ours} there (the agent's answers and traces follow its version)"
    )]
    Version { host: String, theirs: String, ours: String },
    #[error("tracing agent on {host}: its answer to {what} is longer than {limit} bytes{hint}")]
    TooLong { host: String, what: String, limit: usize, hint: &'static str },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// The default agent command for a host (from its URI): `ssh HOST migtrace agent`, as
/// the URI's user, at its port, never asking (see [`SshTarget::command`]). A host or user
/// ssh would take for an option (a leading `-`) is refused.
pub fn ssh_argv(target: &SshTarget) -> Result<Vec<String>, AgentError> {
    target.command(&["migtrace", "agent"]).map_err(|e| AgentError::Agent {
        host: target.host.clone(),
        message: format!(
            "{e}: fix the URI, or give the agent command yourself (--agent-source/--agent-destination, \
             agent_source/agent_destination)"
        ),
    })
}

/// The agent's full command: `argv` (a configured command, already split into words)
/// with `--domain`, `--mac` and `--clock-offset-ns` appended. It is run without a shell;
/// but ssh joins the words after the host into one string for the remote user's shell,
/// so when the program is `ssh` the appended values (a domain name from a spec or a URI)
/// are shell-quoted: the remote side gets them back as the same words, never as shell
/// syntax.
pub fn agent_argv(host: &str, argv: &[String], opts: &AgentOptions) -> Result<Vec<String>, AgentError> {
    if argv.is_empty() {
        return Err(AgentError::Agent { host: host.into(), message: "empty agent command".into() });
    }
    let remote_shell = is_ssh(argv);
    let mut extra = vec!["--domain".to_owned(), opts.domain.clone()];
    if let Some(mac) = &opts.guest_mac {
        extra.extend(["--mac".to_owned(), mac.clone()]);
    }
    if opts.clock_offset_ns != 0 {
        extra.extend(["--clock-offset-ns".to_owned(), opts.clock_offset_ns.to_string()]);
    }
    let mut out = argv.to_vec();
    out.extend(extra.into_iter().map(|w| if remote_shell { shell_words::quote(&w).into_owned() } else { w }));
    Ok(out)
}

/// Whether a command's program is ssh.
fn is_ssh(argv: &[String]) -> bool {
    argv.first().is_some_and(|p| std::path::Path::new(p).file_name().is_some_and(|n| n == "ssh"))
}

/// What `migtrace agent` is asked to trace.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    pub domain: String,
    pub guest_mac: Option<String>,
    /// Test-only: add this to every stamp the agent reports, as if its clock were off.
    pub clock_offset_ns: i64,
}

fn shift(t: u64, by: i64) -> u64 {
    if t == 0 { 0 } else { (t as i128 + by as i128).max(0) as u64 }
}

/// Moves every host-clock stamp of a host trace by `by` ns (the injected test offset).
fn shift_trace(t: &mut HostTrace, by: i64) {
    t.map_stamps(|t| shift(t, by));
}

/// Longest request an agent reads: requests are a few dozen bytes.
pub const REQUEST_LIMIT: usize = 64 << 10;
/// Longest answer the coordinator reads, but for a trace.
pub const ANSWER_LIMIT: usize = 64 << 10;
/// Longest trace the coordinator reads: its packet stamps (about 110 bytes each) make
/// most of it, some 35 MB for 5 minutes of 1 kHz probes.
pub const TRACE_LIMIT: usize = 512 << 20;

/// A line that is not one.
#[derive(Debug, PartialEq, Eq)]
pub enum LineError {
    /// Longer than the limit: consumed to its end, and refused.
    TooLong,
    NotUtf8,
}

/// Reads one line (without its newline) of at most `limit` bytes, never holding more: a
/// longer one is consumed to its end and refused, and the next line is read as usual.
/// None at the end of input. (tokio-util's `LinesCodec` bounds lines too, but a stream of
/// its frames ends at the first overlong line.)
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<Option<Result<String, LineError>>> {
    let mut line = Vec::new();
    let n = (&mut *r).take(limit as u64 + 1).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > limit {
        loop {
            let chunk = r.fill_buf().await?;
            let Some(end) = chunk.iter().position(|&b| b == b'\n') else {
                let n = chunk.len();
                if n == 0 {
                    break;
                }
                r.consume(n);
                continue;
            };
            r.consume(end + 1);
            break;
        }
        return Ok(Some(Err(LineError::TooLong)));
    }
    Ok(Some(String::from_utf8(line).map_err(|_| LineError::NotUtf8)))
}

/// The agent: serves requests from stdin until it ends or says quit.
pub async fn serve(opts: AgentOptions) -> Result<(), AgentError> {
    let mut out = tokio::io::stdout();
    let say = |v: Value| format!("{v}\n");
    let mut host = match HostTracer::start(&opts.domain, opts.guest_mac.as_deref(), None) {
        Ok(h) => h,
        Err(e) => {
            let _ = out.write_all(say(json!({"error": format!("{e:#}")})).as_bytes()).await;
            return Err(e.into());
        }
    };
    let ready = json!({"ready": {
        "host": hostname(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "version": env!("CARGO_PKG_VERSION"),
    }});
    let write_err = |e: std::io::Error| AgentError::Agent { host: "self".into(), message: format!("stdout: {e}") };
    out.write_all(say(ready).as_bytes()).await.map_err(write_err)?;
    out.flush().await.map_err(write_err)?;
    let mut input = BufReader::new(tokio::io::stdin());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut destination_pending = false;
    loop {
        let line = tokio::select! {
            line = read_line(&mut input, REQUEST_LIMIT) => line,
            _ = tick.tick(), if destination_pending => {
                // The incoming QEMU and its tap appear while libvirt prepares the migration.
                if let Err(e) = host.poll() {
                    eprintln!("migtrace agent: {e:#}");
                }
                continue;
            }
        };
        let Ok(Some(line)) = line else { break };
        let parsed = match line {
            Ok(line) => serde_json::from_str::<Value>(&line).map_err(|e| format!("not JSON: {e}")),
            Err(LineError::TooLong) => Err(format!("request longer than {REQUEST_LIMIT} bytes")),
            Err(LineError::NotUtf8) => Err("request not UTF-8".into()),
        };
        let request = match parsed {
            Ok(v) => v,
            Err(e) => {
                out.write_all(say(json!({"error": e})).as_bytes()).await.map_err(write_err)?;
                out.flush().await.map_err(write_err)?;
                continue;
            }
        };
        let answer = match request["op"].as_str() {
            Some("clock") => json!({"t": shift(monotonic_ns(), opts.clock_offset_ns)}),
            Some("begin") => {
                let role = match request["role"].as_str() {
                    Some("source") => Some(Role::Source),
                    Some("destination") => Some(Role::Destination),
                    _ => None,
                };
                match role {
                    Some(role) => {
                        destination_pending = role == Role::Destination;
                        match host.begin(role).await {
                            Ok(pid) => json!({"ok": pid}),
                            Err(e) => json!({"error": format!("{e:#}")}),
                        }
                    }
                    None => json!({"error": "begin needs role source or destination"}),
                }
            }
            Some("answered") => {
                let ident = request["ident"].as_u64().unwrap_or(0) as u16;
                let since = request["since_ns"].as_u64().unwrap_or(0);
                json!({"ok": host.answered_since(ident, since).await})
            }
            Some("finish") => {
                destination_pending = false;
                match host.finish().await {
                    Ok(mut t) => {
                        shift_trace(&mut t, opts.clock_offset_ns);
                        json!({"ok": t})
                    }
                    Err(e) => json!({"error": format!("{e:#}")}),
                }
            }
            Some("quit") => break,
            other => json!({"error": format!("unknown op {other:?}")}),
        };
        out.write_all(say(answer).as_bytes()).await.map_err(write_err)?;
        out.flush().await.map_err(write_err)?;
    }
    host.stop().await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned()
}

/// The coordinator's handle on one agent process.
pub struct Agent {
    pub host: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Option<tokio::task::JoinHandle<String>>,
    /// Started over ssh (its failures are mostly ssh's).
    over_ssh: bool,
}

/// How long an agent may take to answer (loading eBPF programs on start takes longest).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Agent {
    /// Starts `argv` (e.g. `ssh HOST migtrace agent`) with `--domain` and `--mac`
    /// appended (see [`agent_argv`]), and waits for it to report ready. Nothing goes
    /// through a shell here.
    pub async fn spawn(host: &str, argv: &[String], opts: &AgentOptions) -> Result<Self, AgentError> {
        let argv = agent_argv(host, argv, opts)?;
        let command = argv.join(" ");
        let over_ssh = is_ssh(&argv);
        let Some((program, args)) = argv.split_first() else {
            return Err(AgentError::Agent { host: host.into(), message: "empty agent command".into() });
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| AgentError::Spawn { command: command.clone(), source })?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(AgentError::Agent { host: host.into(), message: "no stdio pipes".into() });
        };
        let name = host.to_owned();
        let stderr = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut kept = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("agent {name}: {line}");
                kept.push_str(&line);
                kept.push('\n');
            }
            kept
        });
        let mut agent =
            Self { host: host.into(), child, stdin, stdout: BufReader::new(stdout), stderr: Some(stderr), over_ssh };
        let ready = agent.read("its start", START_TIMEOUT, ANSWER_LIMIT).await?;
        let Some(info) = ready.get("ready") else {
            return Err(agent.failure(ready));
        };
        let ours = env!("CARGO_PKG_VERSION");
        let theirs = info["version"].as_str().unwrap_or("of unknown version");
        if theirs != ours {
            return Err(AgentError::Version { host: host.into(), theirs: theirs.into(), ours: ours.into() });
        }
        Ok(agent)
    }

    async fn read(&mut self, what: &str, timeout: Duration, limit: usize) -> Result<Value, AgentError> {
        let host = self.host.clone();
        match tokio::time::timeout(timeout, read_line(&mut self.stdout, limit)).await {
            Err(_) => Err(AgentError::Timeout { host, what: what.into(), timeout }),
            Ok(Ok(Some(Ok(line)))) => serde_json::from_str(&line).map_err(|e| {
                let shown: String = line.chars().take(200).collect();
                AgentError::Agent { host, message: format!("unexpected answer {shown:?}: {e}") }
            }),
            Ok(Ok(Some(Err(LineError::TooLong)))) => Err(AgentError::TooLong {
                host,
                what: what.into(),
                limit,
                hint: if limit == TRACE_LIMIT {
                    " (a trace this large: lower --probe-rate or --timeout)"
                } else {
                    " (is it a migtrace agent?)"
                },
            }),
            Ok(Ok(Some(Err(LineError::NotUtf8)))) => {
                Err(AgentError::Agent { host, message: format!("its answer to {what} is not UTF-8") })
            }
            Ok(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
                let stderr = match self.stderr.take() {
                    Some(task) => tokio::time::timeout(Duration::from_secs(1), task)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default(),
                    None => String::new(),
                };
                let stderr = stderr.trim().replace('\n', "; ");
                let hint = if self.over_ssh {
                    " (ssh runs with BatchMode=yes: the host's key must be known, and a key must log in without a prompt)"
                } else {
                    ""
                };
                Err(AgentError::Exited {
                    host,
                    stderr: if stderr.is_empty() { hint.into() } else { format!(": {stderr}{hint}") },
                })
            }
        }
    }

    fn failure(&self, answer: Value) -> AgentError {
        AgentError::Agent {
            host: self.host.clone(),
            message: answer["error"].as_str().map_or_else(|| answer.to_string(), str::to_owned),
        }
    }

    async fn call(&mut self, request: Value, timeout: Duration, limit: usize) -> Result<Value, AgentError> {
        let what = request["op"].as_str().unwrap_or("a request").to_owned();
        let line = format!("{request}\n");
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            return Err(AgentError::Agent { host: self.host.clone(), message: format!("writing to the agent: {e}") });
        }
        let _ = self.stdin.flush().await;
        let answer = self.read(&what, timeout, limit).await?;
        if answer.get("error").is_some() { Err(self.failure(answer)) } else { Ok(answer) }
    }

    /// `n` clock exchanges and the offset they give (agent − ours).
    pub async fn clock(&mut self, n: usize) -> Result<OffsetEstimate, AgentError> {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let sent_ns = monotonic_ns();
            let answer = self.call(json!({"op": "clock"}), CALL_TIMEOUT, ANSWER_LIMIT).await?;
            let received_ns = monotonic_ns();
            let remote_ns = answer["t"].as_u64().ok_or_else(|| self.failure(answer.clone()))?;
            samples.push(ClockSample { sent_ns, remote_ns, received_ns });
        }
        estimate_offset(&samples)
            .ok_or_else(|| AgentError::Agent { host: self.host.clone(), message: "no usable clock exchange".into() })
    }

    pub async fn begin(&mut self, role: Role) -> Result<Option<u32>, AgentError> {
        let answer = self.call(json!({"op": "begin", "role": role}), CALL_TIMEOUT, ANSWER_LIMIT).await?;
        Ok(answer["ok"].as_u64().map(|p| p as u32))
    }

    pub async fn answered_since(&mut self, ident: u16, since_ns: u64) -> Result<bool, AgentError> {
        let request = json!({"op": "answered", "ident": ident, "since_ns": since_ns});
        let answer = self.call(request, CALL_TIMEOUT, ANSWER_LIMIT).await?;
        Ok(answer["ok"].as_bool().unwrap_or(false))
    }

    pub async fn finish(&mut self) -> Result<HostTrace, AgentError> {
        let answer = self.call(json!({"op": "finish"}), CALL_TIMEOUT, TRACE_LIMIT).await?;
        serde_json::from_value(answer["ok"].clone())
            .map_err(|e| AgentError::Agent { host: self.host.clone(), message: format!("unexpected trace: {e}") })
    }

    /// Asks the agent to detach and exit; kills it if it does not within 5 s.
    pub async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"op\":\"quit\"}\n").await;
        let _ = self.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// One host of a pair as the coordinator traces it: an agent process, or a tracer in
/// this process when the host is this machine.
pub enum HostSide {
    Agent(Box<Agent>),
    Local(Box<HostTracer>),
}

/// Clock exchanges per estimate: the fastest quarter decides.
const CLOCK_SAMPLES: usize = 32;

impl HostSide {
    /// The host's clock now (exact for a local tracer).
    pub async fn clock(&mut self) -> Result<Option<OffsetEstimate>, AgentError> {
        match self {
            HostSide::Agent(a) => a.clock(CLOCK_SAMPLES).await.map(Some),
            HostSide::Local(_) => Ok(None),
        }
    }

    pub async fn begin(&mut self, role: Role) -> Result<Option<u32>, AgentError> {
        match self {
            HostSide::Agent(a) => a.begin(role).await,
            HostSide::Local(h) => Ok(h.begin(role).await?),
        }
    }

    /// Polls a local destination for its QEMU (an agent polls by itself).
    pub fn poll(&mut self) {
        if let HostSide::Local(h) = self {
            let _ = h.poll();
        }
    }

    pub async fn answered_since(&mut self, ident: u16, since_ns: u64) -> Result<bool, AgentError> {
        match self {
            HostSide::Agent(a) => a.answered_since(ident, since_ns).await,
            HostSide::Local(h) => Ok(h.answered_since(ident, since_ns).await),
        }
    }

    pub async fn finish(&mut self) -> Result<HostTrace, AgentError> {
        match self {
            HostSide::Agent(a) => a.finish().await,
            HostSide::Local(h) => Ok(h.finish().await?),
        }
    }

    pub async fn stop(self) {
        match self {
            HostSide::Agent(a) => a.quit().await,
            HostSide::Local(h) => {
                let _ = h.stop().await;
            }
        }
    }
}

/// How each host of a pair is traced.
#[derive(Clone, Debug)]
pub enum HostTracing {
    /// Not at all: only what the hypervisor itself reports.
    Off,
    /// By a tracer in this process, the host living in a network namespace of this
    /// machine (None: the current one).
    Local(Vec<(String, Option<String>)>),
    /// By an agent started with each host's command (`ssh HOST migtrace agent`, …).
    Agents(Vec<(String, Vec<String>)>),
}

/// Starts the tracers `how` asks for, one per host name.
pub async fn start_hosts(
    how: &HostTracing,
    opts: &AgentOptions,
) -> Result<std::collections::BTreeMap<String, HostSide>, AgentError> {
    let mut hosts = std::collections::BTreeMap::new();
    match how {
        HostTracing::Off => {}
        HostTracing::Local(list) => {
            for (name, ns) in list {
                let tracer = HostTracer::start(&opts.domain, opts.guest_mac.as_deref(), ns.clone())?;
                hosts.insert(name.clone(), HostSide::Local(Box::new(tracer)));
            }
        }
        HostTracing::Agents(list) => {
            for (name, argv) in list {
                let agent = Agent::spawn(name, argv, opts).await?;
                hosts.insert(name.clone(), HostSide::Agent(Box::new(agent)));
            }
        }
    }
    Ok(hosts)
}

/// A host's clock over one migration, as the record keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClockRecord {
    pub offset_ns: i64,
    pub uncertainty_ns: u64,
    pub drift_ppm: f64,
    /// `agent` (estimated over the agent's channel) or `local` (this machine's clock).
    pub source: String,
}

impl ClockRecord {
    pub fn of(clock: &HostClock, local: bool) -> Self {
        Self {
            offset_ns: clock.offset_ns,
            uncertainty_ns: clock.uncertainty_ns,
            drift_ppm: clock.drift_ppm,
            source: if local { "local" } else { "agent" }.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::tracer::{PacketStamp, PhaseStamp, VcpuStamp};

    #[test]
    fn nothing_from_a_spec_or_uri_reaches_a_shell_as_syntax() {
        let evil = "web; touch /tmp/pwned $(id) `id` 'q'";
        let opts =
            AgentOptions { domain: evil.into(), guest_mac: Some("52:54:00:12:34:56".into()), clock_offset_ns: 0 };
        // Run directly: the domain is one word, as it is.
        let local = agent_argv("h", &["/usr/bin/migtrace".into(), "agent".into()], &opts).expect("argv");
        assert_eq!(local, ["/usr/bin/migtrace", "agent", "--domain", evil, "--mac", "52:54:00:12:34:56"]);
        // Over ssh the remote shell reads the joined words: quoted, they come back whole.
        let target = SshTarget { host: "h1.example".into(), ..SshTarget::default() };
        let remote = agent_argv("h", &ssh_argv(&target).expect("host"), &opts).expect("argv");
        assert_eq!(&remote[..7], ["ssh", "-o", "BatchMode=yes", "--", "h1.example", "migtrace", "agent"]);
        let joined = remote[5..].join(" ");
        assert_eq!(
            shell_words::split(&joined).expect("the remote shell's reading"),
            ["migtrace", "agent", "--domain", evil, "--mac", "52:54:00:12:34:56"]
        );
        // A URI host ssh would take for an option is refused, with what to do.
        for bad in ["-oProxyCommand=touch /tmp/pwned", "", "a b"] {
            let e = ssh_argv(&SshTarget { host: bad.into(), ..SshTarget::default() }).expect_err("refused").to_string();
            assert!(e.contains("agent command yourself"), "{e}");
        }
        assert!(agent_argv("h", &[], &opts).is_err());
    }

    #[tokio::test]
    async fn lines_longer_than_the_limit_are_refused_whole_and_the_next_is_read() {
        let long = "x".repeat(100);
        let mut input = format!("{{\"op\":\"clock\"}}\n{long}\n{{\"op\":\"quit\"}}\n").into_bytes();
        input.extend(b"\xffx\n");
        input.extend("y".repeat(10).as_bytes());
        // A small buffer: the long line spans many fills.
        let mut r = BufReader::with_capacity(8, input.as_slice());
        let mut read = Vec::new();
        while let Some(line) = read_line(&mut r, 16).await.expect("read") {
            read.push(line);
        }
        assert_eq!(
            read,
            [
                Ok(r#"{"op":"clock"}"#.to_owned()),
                Err(LineError::TooLong),
                Ok(r#"{"op":"quit"}"#.to_owned()),
                Err(LineError::NotUtf8),
                Ok("y".repeat(10)),
            ]
        );
        // A last line longer than the limit, without a newline.
        let mut r = BufReader::new(long.as_bytes());
        assert_eq!(read_line(&mut r, 16).await.expect("read"), Some(Err(LineError::TooLong)));
        assert_eq!(read_line(&mut r, 16).await.expect("read"), None);
    }

    #[test]
    fn an_injected_offset_moves_host_stamps_but_not_echoed_send_stamps() {
        let mut t = HostTrace { attached_ns: 100, ..HostTrace::default() };
        t.trace.phases.push(PhaseStamp {
            ts_ns: 1_000,
            tgid: 1,
            tid: 1,
            point: "VmStart".into(),
            ret: false,
            args: [0; 3],
            returned: None,
            round: Some(0),
            unread: None,
            link_bytes: 0,
            host: None,
        });
        t.trace.packets.push(PacketStamp {
            ts_ns: 2_000,
            tap: "vnet0".into(),
            kind: "icmp-echo-reply".into(),
            ident: 7,
            seq: 1,
            sent_ns: 1_500,
        });
        t.trace.destination_vcpus.push(VcpuStamp {
            tid: 2,
            first_enter_ns: 3_000,
            last_enter_ns: 4_000,
            last_exit_ns: 0,
            enters: 2,
        });
        shift_trace(&mut t, 500);
        assert_eq!((t.attached_ns, t.trace.phases[0].ts_ns, t.trace.packets[0].ts_ns), (600, 1_500, 2_500));
        assert_eq!(t.trace.packets[0].sent_ns, 1_500, "the coordinator's stamp stays");
        let v = &t.trace.destination_vcpus[0];
        assert_eq!((v.first_enter_ns, v.last_enter_ns, v.last_exit_ns), (3_500, 4_500, 0), "0 means never");
    }
}
