//! A measured migration: tracing, the paper's ping and migtrace's probe sender around
//! one migration of a [`HostPair`], turned into one [`MigrationRecord`].

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    downtime::{self, ProbeSummary},
    heartbeat, memcheck, outage,
    ping::Ping,
    prober::Prober,
    record::MigrationRecord,
    timeline::{self, Timeline},
};
use crate::{
    clock::{HostClock, OffsetEstimate, WallClock},
    hypervisor::{HostPair, MigrationOutcome, MigrationParams, link::LinkRecord},
    probe::{
        agent::{AgentError, ClockRecord, HostSide},
        host::{HostTrace, Role},
        tracer::{Trace, TraceError, TraceHost, Tracer},
    },
};

/// RARPs QEMU sends per NIC after a migration (its `announce-rounds` default).
const ANNOUNCE_RARPS: usize = 5;

/// How a migration is observed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MeasureOptions {
    /// eBPF tracing (phase timeline, vCPU blackout, packet stamps at the taps).
    pub trace: bool,
    /// iputils ping interval; None: no ping.
    pub ping_interval: Option<Duration>,
    /// Probe sender interval; None: no probe sender.
    pub probe_interval: Option<Duration>,
    /// Observation before the migration starts (probes reach steady state).
    pub preroll: Duration,
    /// Observation after it completes (first packets, late replies, announce rounds)
    /// when this process does not stamp the destination's tap (no tracing, or tracing
    /// agents on the hosts). With the lab traced here, observation ends as soon as the
    /// guest answered a probe and a ping sent after the migration and QEMU's announce is
    /// over (see `Session::settle`).
    pub settle: Duration,
    /// Observation after a migration ends at the latest this long after it.
    pub settle_max: Duration,
    /// Keep the raw trace in the record.
    pub keep_trace: bool,
    /// Ask the guest agent to check its working set after each completed migration,
    /// waiting this long for the answer; None: no check.
    pub memory_check: Option<Duration>,
    /// A silence of more than this many send intervals (probe, heartbeat or ping) is
    /// an outage.
    #[serde(default = "default_outage_threshold")]
    pub outage_threshold: f64,
}

fn default_outage_threshold() -> f64 {
    outage::DEFAULT_THRESHOLD_INTERVALS
}

impl Default for MeasureOptions {
    fn default() -> Self {
        Self {
            trace: true,
            ping_interval: Some(Duration::from_millis(50)),
            probe_interval: Some(Duration::from_millis(1)),
            preroll: Duration::from_millis(100),
            settle: Duration::from_millis(1000),
            settle_max: Duration::from_secs(10),
            keep_trace: false,
            memory_check: Some(Duration::from_secs(5)),
            outage_threshold: outage::DEFAULT_THRESHOLD_INTERVALS,
        }
    }
}

/// Where the guest is reachable from, and the taps its packets cross.
#[derive(Clone, Debug)]
pub struct Network {
    /// Network namespace to send probes from (the lab's client), None for the current one.
    pub ns: Option<String>,
    pub guest: Ipv4Addr,
    /// The taps to stamp the guest's packets at, each in its host's namespace.
    pub taps: Vec<(String, &'static str)>,
    /// The ends of the link between the hosts, each in its host's namespace, to count
    /// what crosses it (the labs).
    pub link: Vec<(String, &'static str)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Hosts(E),
}

/// How a session traces the hosts.
pub enum Tracing {
    Off,
    /// Both hypervisor processes on this machine, known by pid (the embedded lab).
    Lab(Box<Tracer>),
    /// One tracer per host (an agent, or this process for this machine), each finding
    /// the domain's QEMU and tap on its host; keyed by host name as the pair names them.
    Hosts(BTreeMap<String, HostSide>),
}

/// Observes migrations of one host pair.
pub struct Session {
    tracing: Tracing,
    pub options: MeasureOptions,
    network: Network,
}

/// Where the wall time of one measured migration went, stage by stage.
struct Stages {
    last: std::time::Instant,
    ms: BTreeMap<String, f64>,
}

impl Stages {
    fn start() -> Self {
        Self { last: std::time::Instant::now(), ms: BTreeMap::new() }
    }

    /// The stage that just ended, named.
    fn mark(&mut self, stage: &str) {
        let now = std::time::Instant::now();
        *self.ms.entry(stage.to_owned()).or_default() += (now - self.last).as_secs_f64() * 1e3;
        self.last = now;
    }

    fn done(self) -> BTreeMap<String, f64> {
        self.ms
    }
}

/// What the hosts traced of one migration, on the coordinator's clock.
struct Traced {
    trace: Trace,
    /// The destination tap's name as packet stamps carry it.
    destination_tap: Option<String>,
    clocks: BTreeMap<String, ClockRecord>,
    /// Per host, the bound on a converted stamp's error.
    uncertainty_ns: BTreeMap<String, u64>,
    problems: Vec<String>,
}

impl Session {
    /// Starts tracing (if enabled) for the embedded lab. Must be called within a tokio
    /// runtime, as root.
    pub fn start(network: Network, options: MeasureOptions) -> Result<Self, TraceError> {
        let tracing = if options.trace {
            Tracing::Lab(Box::new(Tracer::start(&network.taps, &network.link)?))
        } else {
            Tracing::Off
        };
        Ok(Self { tracing, options, network })
    }

    /// A session that traces each host with its own tracer (`hosts` by the names the
    /// pair's `endpoints` use); without tracers (`options.trace` off) nothing is traced.
    pub fn with_hosts(network: Network, options: MeasureOptions, hosts: BTreeMap<String, HostSide>) -> Self {
        let tracing = if options.trace && !hosts.is_empty() { Tracing::Hosts(hosts) } else { Tracing::Off };
        Self { tracing, options, network }
    }

    /// Observation after a completed migration, ended as soon as what it waits for has
    /// been seen, bounded by `settle_max`:
    /// 1. the guest answered again: a probe request and a ping sent after the migration
    ///    ended were answered (so both gaps are closed);
    /// 2. QEMU's self-announcement is over (its RARPs seen at the destination's tap),
    ///    while the hosts get the next migration ready ([`HostPair::prepare_ahead`]).
    ///
    /// Without the tap's stamps (no tracing, or tracing agents on other hosts) each step
    /// waits `settle` instead.
    #[allow(clippy::too_many_arguments)]
    async fn settle<P: HostPair>(
        &mut self,
        pair: &mut P,
        outcome: &MigrationOutcome,
        end: u64,
        prober: Option<&Prober>,
        ping: Option<&Ping>,
        dst_host: &str,
        stages: &mut Stages,
    ) -> Result<(), SessionError<P::Error>> {
        let end_unix_us = outcome.start_unix_us + (end.saturating_sub(outcome.start_ns) / 1000) as i64;
        let since_end = |end: u64| Duration::from_nanos(crate::clock::monotonic_ns().saturating_sub(end));
        let bound = self.options.settle_max.max(self.options.settle);
        let lab_traced = matches!(self.tracing, Tracing::Lab(_));
        let pair_offline = pair.guest_offline().is_some();
        // A guest without a network tells nothing here: its heartbeats (if any) arrive
        // over the hosts' channel within `settle`.
        if !lab_traced || pair_offline {
            tokio::time::sleep(self.options.settle.saturating_sub(since_end(end))).await;
        }
        loop {
            let answered = match (prober, &mut self.tracing) {
                (None, _) | (_, Tracing::Off) => true,
                (Some(p), Tracing::Lab(t)) => t.answered_since(p.ident, end).await,
                (Some(p), Tracing::Hosts(hosts)) => match hosts.get_mut(dst_host) {
                    Some(h) => h.answered_since(p.ident, end).await?,
                    None => true,
                },
            };
            let pinged = ping.is_none_or(|p| p.replied_since(end_unix_us));
            if (answered && pinged) || since_end(end) >= bound {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stages.mark("settle-answered");
        // The old source is done with: the next destination starts while the announce
        // runs, traced from its start.
        let ahead = pair.prepare_ahead();
        let announced = async {
            let t = match &self.tracing {
                Tracing::Lab(t) if t.stamps_tap(dst_host) => t,
                // A guest without a NIC announces nothing.
                _ if pair_offline => return,
                _ => {
                    tokio::time::sleep(self.options.settle.saturating_sub(since_end(end))).await;
                    return;
                }
            };
            // QEMU sends the first round before it resumes the VM.
            while t.rarps_since(dst_host, outcome.start_ns).await < ANNOUNCE_RARPS && since_end(end) < bound {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (ahead, ()) = tokio::join!(ahead, announced);
        match ahead {
            Ok(Some(pid)) => {
                if let Tracing::Lab(t) = &mut self.tracing {
                    t.watch(pid)?;
                }
            }
            Ok(None) => {}
            // The measured migration stays measured; the next one starts its
            // destination the usual way (`prepare_next`).
            Err(e) => log::warn!("getting the next migration ready ahead failed: {e}"),
        }
        Ok(())
    }

    /// Migrates once and measures it every way.
    pub async fn migrate<P: HostPair>(
        &mut self,
        pair: &mut P,
        params: &MigrationParams,
        repetition: u32,
        treatment: &str,
    ) -> Result<MigrationRecord, SessionError<P::Error>> {
        let mut stages = Stages::start();
        let (src, dst) = pair.pids();
        let (src_host, dst_host) = pair.endpoints();
        // A guest without network: no ping, no probe sender; those measures are missing.
        let offline = pair.guest_offline();
        let mut clocks_before = BTreeMap::new();
        match &mut self.tracing {
            Tracing::Off => {}
            Tracing::Lab(t) => {
                for pid in t.watched() {
                    if pid == src || pid == dst {
                        continue;
                    }
                    // The old source has quit: its uprobes go in the background.
                    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                        t.unwatch(pid)?;
                    } else {
                        t.unwatch_exited(pid)?;
                    }
                }
                stages.mark("detach");
                t.watch(src)?;
                t.watch(dst)?;
                stages.mark("attach-probes");
                t.begin(src, dst).await?;
            }
            Tracing::Hosts(hosts) => {
                for (name, role) in [(&src_host, Role::Source), (&dst_host, Role::Destination)] {
                    let host = hosts.get_mut(name).ok_or_else(|| AgentError::Agent {
                        host: name.clone(),
                        message: "no tracer for this host".into(),
                    })?;
                    clocks_before.insert(name.clone(), host.clock().await?);
                    host.begin(role).await?;
                }
            }
        }
        let guest = self.network.guest.to_string();
        let online = offline.is_none();
        let ping =
            self.options.ping_interval.filter(|_| online).map(|i| Ping::start(self.network.ns.as_deref(), &guest, i));
        let prober = self
            .options
            .probe_interval
            .filter(|_| online)
            .map(|i| Prober::start(self.network.ns.clone(), self.network.guest, i));
        let observed_from = crate::clock::monotonic_ns();
        stages.mark("attach");
        tokio::time::sleep(self.options.preroll).await;
        stages.mark("preroll");

        let link_tx_before = pair.link_tx_bytes();
        let result = {
            let migration = pair.migrate(params);
            tokio::pin!(migration);
            loop {
                tokio::select! {
                    result = &mut migration => break result,
                    // A destination traced in this process looks for its incoming QEMU.
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {
                        if let Tracing::Hosts(hosts) = &mut self.tracing
                            && let Some(h) = hosts.get_mut(&dst_host)
                        {
                            h.poll();
                        }
                    }
                }
            }
        };
        stages.mark("migration");
        // The link's counter, while the source's end is still known.
        let link_tx = link_tx_before.zip(pair.link_tx_bytes()).map(|(a, b)| b.saturating_sub(a));
        if let Ok(outcome) = &result
            && outcome.status == crate::hypervisor::Status::Completed
            && let Some(end) = outcome.end_ns
        {
            self.settle(pair, outcome, end, prober.as_ref(), ping.as_ref(), &dst_host, &mut stages).await?;
        } else if result.is_ok() {
            tokio::time::sleep(self.options.settle).await;
        }
        stages.mark("settle");
        let prober = prober.map(|p| tokio::task::block_in_place(|| p.stop()));
        let ping = ping.map(|p| tokio::task::block_in_place(|| p.stop()));
        stages.mark("stop-observers");
        // Heartbeats up to now: the check below pauses the guest's pattern (not its
        // heartbeats), but the observation ends here.
        let heartbeats = pair.heartbeats(observed_from);
        let observed_until = crate::clock::monotonic_ns();
        // The guest checks its own memory once it has settled on the destination: over
        // the hosts' own channel if they have one, else over the network.
        let memory_check = match (&result, self.options.memory_check) {
            (Ok(o), Some(timeout)) if o.status == crate::hypervisor::Status::Completed => {
                match pair.memory_check(timeout).await {
                    Some(check) => Some(check),
                    None => Some(match &offline {
                        Some(why) => Err(format!("{why} and the hosts have no other channel to ask it")),
                        None => tokio::task::block_in_place(|| {
                            memcheck::request(self.network.ns.as_deref(), self.network.guest, timeout)
                        }),
                    }),
                }
            }
            _ => None,
        };
        stages.mark("memory-check");
        let traced = match &mut self.tracing {
            Tracing::Off => None,
            Tracing::Lab(t) => Some(Traced {
                trace: t.finish(src, dst).await?,
                destination_tap: Some(dst_host.clone()).filter(|h| !h.is_empty()),
                clocks: BTreeMap::new(),
                uncertainty_ns: BTreeMap::new(),
                problems: Vec::new(),
            }),
            Tracing::Hosts(hosts) => Some(finish_hosts(hosts, &src_host, &dst_host, &clocks_before).await?),
        };
        let mut outcome = result.map_err(SessionError::Hosts)?;
        let trace = traced.as_ref().map(|t| t.trace.clone());
        if matches!(self.tracing, Tracing::Hosts(_))
            && let Some(t) = &trace
        {
            // Only the hosts' tracers know which QEMU processes ran the domain.
            (outcome.source_pid, outcome.destination_pid) = (t.source_pid, t.destination_pid);
        }

        let mut timeline: Timeline = timeline::assemble(&timeline::Input {
            outcome: &outcome,
            trace: trace.as_ref(),
            qemu_versions: pair.hypervisor_versions(),
            clock: WallClock::from_pair(outcome.start_ns, outcome.start_unix_us),
            destination_tap: traced.as_ref().and_then(|t| t.destination_tap.as_deref()),
            probe_ident: prober.as_ref().map(|p| p.ident),
        });
        let probe: Option<ProbeSummary> = prober.as_ref().map(|p| match &trace {
            Some(t) => {
                let m = &timeline.marks;
                downtime::probe_gap(p, &t.packets, m.source_paused_ns.zip(m.destination_resumed_ns), outcome.start_ns)
            }
            None => ProbeSummary {
                interval_us: p.interval_us,
                ident: p.ident,
                sent: p.sent,
                error: Some("tracing is off: replies are stamped at the taps by the eBPF classifier".into()),
                ..ProbeSummary::default()
            },
        });
        let heartbeat = heartbeats
            .as_ref()
            .filter(|_| outcome.status == crate::hypervisor::Status::Completed)
            .map(|beats| heartbeat::summarise(beats, &src_host, &dst_host, outcome.start_ns));
        if let Some(first) = heartbeat.as_ref().and_then(|h| h.first_destination_ns) {
            heartbeat::add_phase(&mut timeline, first);
        }
        let mut measures = downtime::compute(&outcome, &timeline, ping.as_ref(), probe.as_ref());
        if let Some(why) = &offline {
            // No network: every measure taken on it is missing for that one reason.
            for m in measures.missing.iter_mut() {
                let measure =
                    ["downtime_ms.ping_max_gap", "downtime_ms.ping", "downtime_ms.probe_gap", "timeline: announce"]
                        .into_iter()
                        .find(|x| m.strip_prefix(x).is_some_and(|rest| rest.starts_with(": ")));
                if let Some(measure) = measure {
                    *m = format!("{measure}: {why}");
                }
            }
        }
        if let Some(h) = &heartbeat {
            measures.downtime_ms.heartbeat_gap = h.gap_ms;
            if let Some(e) = &h.error {
                measures.missing.push(format!("downtime_ms.heartbeat_gap: {e}"));
            }
        }
        let observed = outage::Observed {
            probe: prober.as_ref().zip(trace.as_ref().map(|t| t.packets.as_slice())),
            heartbeats: heartbeats
                .as_deref()
                .map(|b| (b, heartbeat.as_ref().and_then(|h| h.interval_p50_ms).unwrap_or(1.0))),
            ping: ping.as_ref(),
            clock: WallClock::from_pair(outcome.start_ns, outcome.start_unix_us),
            observed_until,
        };
        let m = &timeline.marks;
        let switchover = m.source_paused_ns.zip(m.destination_resumed_ns);
        let outages = match outage::of_migration(
            &observed,
            self.options.outage_threshold,
            switchover,
            &timeline,
            outcome.start_ns,
        ) {
            Ok(found) => {
                (measures.downtime_ms.outages_total, measures.downtime_ms.longest_outage) = outage::totals(&found);
                Some(found)
            }
            Err(why) => {
                let why = offline.clone().unwrap_or(why);
                for m in ["outages", "downtime_ms.outages_total", "downtime_ms.longest_outage"] {
                    measures.missing.push(format!("{m}: {why}"));
                }
                None
            }
        };
        let configured_link = pair.link();
        let (achieved, link_missing) = super::link::achieved(&outcome, &timeline.marks, trace.as_ref(), link_tx);
        let completed = outcome.status == crate::hypervisor::Status::Completed;
        let mut params = params.clone();
        if configured_link.is_some() || completed {
            params.link = Some(LinkRecord { configured: configured_link, achieved });
            if completed {
                measures.missing.extend(link_missing);
            }
        }
        let origin = outcome.start_ns;
        let mut record = MigrationRecord::new(repetition, treatment.to_owned(), params, outcome);
        record.machine = Some(pair.machine());
        record.ping = ping.map(|mut p| {
            if let Some(g) = measures.ping_gap {
                p.max_gap_ms = Some(g.ms);
                p.gap_start_ms = Some((g.start_ns as i128 - origin as i128) as f64 / 1e6);
                p.late_ms = g.late_ms;
            }
            p
        });
        record.downtime_ms = measures.downtime_ms;
        record.migration_time_ms = measures.migration_time_ms;
        record.evidence = measures.evidence;
        record.probe = probe;
        record.heartbeat = heartbeat;
        record.outages = outages;
        record.trace_health = trace.as_ref().map(|t| t.health.clone());
        if let Some(t) = &traced {
            record.clocks = t.clocks.clone();
            record.uncertainty_ms = cross_host_uncertainty(&record, &t.uncertainty_ns, &src_host, &dst_host);
            if let Some(h) = record.trace_health.as_mut() {
                h.problems.extend(t.problems.iter().cloned());
            }
        }
        record.missing = measures.missing;
        let console = pair.guest_check();
        record.guest = (console.is_some() || memory_check.is_some()).then(|| {
            let mut g = console.unwrap_or_default();
            // The guest's own silence only: no answer, at the taps or at the sender's
            // socket, to any probe sent after it resumed (or no heartbeat from the
            // destination). A classifier that saw too few replies is a missing measure,
            // not a hung guest.
            g.unreachable = record.probe.as_ref().is_some_and(|p| p.error.is_none() && p.open_gap_ms.is_some())
                || record.heartbeat.as_ref().is_some_and(|h| h.destination == 0);
            match memory_check {
                // A rebooted guest's agent started over: its check covers the new boot only.
                Some(Ok(_)) if g.rebooted => record.missing.push(
                    "guest.memory_check: the guest rebooted, its agent's working set is new (see guest.stale_writes)"
                        .into(),
                ),
                Some(Ok(check)) => g.memory_check = Some(check),
                Some(Err(e)) => record.missing.push(format!("guest.memory_check: {e}")),
                None => {}
            }
            g
        });
        record.timeline = Some(timeline);
        if self.options.keep_trace {
            record.trace = trace;
        }
        stages.mark("finish");
        record.procedure_ms = stages.done();
        Ok(record)
    }

    /// Stops tracing and detaches everything (agents are told to quit).
    pub async fn stop(self) -> Result<(), TraceError> {
        match self.tracing {
            Tracing::Off => {}
            Tracing::Lab(t) => {
                t.stop().await?;
            }
            Tracing::Hosts(hosts) => {
                for (_, h) in hosts {
                    h.stop().await;
                }
            }
        }
        Ok(())
    }
}

/// Collects both hosts' traces, brings them onto our clock and merges them.
async fn finish_hosts(
    hosts: &mut BTreeMap<String, HostSide>,
    src_host: &str,
    dst_host: &str,
    clocks_before: &BTreeMap<String, Option<OffsetEstimate>>,
) -> Result<Traced, AgentError> {
    let mut parts = Vec::new();
    for name in [src_host, dst_host] {
        let Some(host) = hosts.get_mut(name) else { continue };
        let host_trace = host.finish().await?;
        let after = host.clock().await?;
        let before = clocks_before.get(name).copied().flatten();
        let clock = match (&before, &after) {
            (Some(b), a) => HostClock::from_estimates(b, a.as_ref()),
            (None, _) => HostClock::local(),
        };
        parts.push((name.to_owned(), host_trace, clock, before.is_none()));
    }
    Ok(merge_host_traces(parts))
}

/// One trace from the source's and the destination's (in that order), each converted
/// with its host's clock; phases carry their host, packet stamps name their tap as
/// `host/tap`, and each side says which host traced it and when it attached.
fn merge_host_traces(parts: Vec<(String, HostTrace, HostClock, bool)>) -> Traced {
    let mut merged = Trace::default();
    let mut traced = Traced {
        trace: Trace::default(),
        destination_tap: None,
        clocks: BTreeMap::new(),
        uncertainty_ns: BTreeMap::new(),
        problems: Vec::new(),
    };
    for (i, (host, mut part, clock, local)) in parts.into_iter().enumerate() {
        part.map_stamps(|t| clock.to_local(t));
        let t = part.trace;
        merged.phases.extend(t.phases.into_iter().map(|mut p| {
            p.host = Some(host.clone());
            p
        }));
        let traced_by = Some(TraceHost { name: host.clone(), attached_ns: part.attached_ns });
        merged.packets.extend(t.packets.into_iter().map(|mut p| {
            p.tap = format!("{host}/{}", p.tap);
            p
        }));
        if i == 0 {
            merged.source_pid = part.pid;
            merged.source_kvm = t.source_kvm;
            merged.source_vcpus = t.source_vcpus;
            merged.source_host = traced_by;
        } else {
            merged.destination_pid = part.pid;
            merged.destination_vcpus = t.destination_vcpus;
            merged.destination_host = traced_by;
            traced.destination_tap = part.tap.as_ref().map(|tap| format!("{host}/{tap}"));
        }
        let h = &mut merged.health;
        h.lost_records += t.health.lost_records;
        h.undecodable_records += t.health.undecodable_records;
        h.dropped_records += t.health.dropped_records;
        for (name, n) in t.health.diagnostics {
            *h.diagnostics.entry(name).or_default() += n;
        }
        if i == 0 {
            h.missing_source_symbols = t.health.missing_source_symbols;
        } else {
            h.missing_destination_symbols = t.health.missing_destination_symbols;
        }
        for m in t.health.missing_tracepoints {
            if !h.missing_tracepoints.contains(&m) {
                h.missing_tracepoints.push(m);
            }
        }
        traced.problems.extend(part.problems.into_iter().map(|p| format!("{host}: {p}")));
        traced.uncertainty_ns.insert(host.clone(), clock.uncertainty_ns);
        traced.clocks.insert(host, ClockRecord::of(&clock, local));
    }
    merged.phases.sort_by_key(|p| p.ts_ns);
    merged.packets.sort_by_key(|p| p.ts_ns);
    traced.trace = merged;
    traced
}

/// The bound clock alignment puts on each measure whose ends were stamped on two hosts.
fn cross_host_uncertainty(
    record: &MigrationRecord,
    per_host_ns: &BTreeMap<String, u64>,
    src_host: &str,
    dst_host: &str,
) -> BTreeMap<String, f64> {
    let u = |h: &str| per_host_ns.get(h).copied().unwrap_or(0) as f64 / 1e6;
    let both = u(src_host) + u(dst_host);
    let mut out = BTreeMap::new();
    if both == 0.0 {
        return out;
    }
    if record.downtime_ms.vcpu.is_some() {
        out.insert("downtime_ms.vcpu".into(), both);
    }
    if record.migration_time_ms.traced_to_resume.is_some() {
        out.insert("migration_time_ms.traced_to_resume".into(), both);
    }
    if let Some(p) = &record.probe
        && p.gap_ms.is_some()
    {
        let host_of = |tap: &Option<String>| tap.as_deref().and_then(|t| t.split('/').next()).map(str::to_owned);
        let (a, b) = (host_of(&p.last_host_before), host_of(&p.first_host_after));
        if a != b {
            out.insert("downtime_ms.probe_gap".into(), a.as_deref().map_or(0.0, u) + b.as_deref().map_or(0.0, u));
        }
    }
    if record.timeline.as_ref().is_some_and(|t| t.phase("destination load").is_some()) {
        out.insert("timeline.destination load".into(), both);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hypervisor::Versions,
        measure::{record, timeline::Input},
    };

    const MS: u64 = 1_000_000;
    /// Host b's clock runs this far ahead of ours; its stamps come back converted.
    const B_AHEAD_NS: i64 = 2_000_000_000;

    /// A recorded lab migration (QEMU 7.2 under TCG): one tracer saw both QEMUs, pids
    /// 31218 → 31222. The QMP events are left out: libvirt hosts have none.
    fn recorded() -> MigrationRecord {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tcg-dirty-2000.jsonl");
        let mut r = record::read(&path).expect("fixture").remove(0);
        (r.outcome.source_events, r.outcome.destination_events) = (Vec::new(), Vec::new());
        r
    }

    /// That migration as the tracers of two hosts `a` and `b` report it: each its own
    /// QEMU's stamps (both QEMUs with pid `pid`) and tap, attached at `attached` ns after
    /// the command (a tracer attached then saw nothing of its QEMU before, nor the return
    /// of a call under way), on its own clock (b's ahead by [`B_AHEAD_NS`]).
    fn as_two_hosts(r: &MigrationRecord, pid: u32, attached: [u64; 2]) -> Vec<(String, HostTrace, HostClock, bool)> {
        let t = r.trace.as_ref().expect("recorded with --keep-trace");
        let start = r.outcome.start_ns;
        let side = |i: usize| {
            let (qemu, tap) = [(t.source_pid, "tap-a"), (t.destination_pid, "tap-b")][i];
            let at = start + attached[i];
            let mut open = Vec::new();
            let seen = |p: &&crate::probe::tracer::PhaseStamp| {
                let call = (p.tid, p.point.clone());
                if !p.ret {
                    open.push(call);
                    true
                } else if let Some(i) = open.iter().rposition(|c| *c == call) {
                    open.remove(i);
                    true
                } else {
                    false
                }
            };
            let mut trace = Trace {
                phases: t.phases.iter().filter(|p| p.tgid == qemu && p.ts_ns >= at).filter(seen).cloned().collect(),
                packets: t.packets.iter().filter(|p| p.tap == tap).cloned().collect(),
                health: t.health.clone(),
                ..Trace::default()
            };
            trace.phases.iter_mut().for_each(|p| p.tgid = pid);
            if i == 0 {
                (trace.source_pid, trace.source_kvm, trace.source_vcpus) =
                    (pid, t.source_kvm.clone(), t.source_vcpus.clone());
            } else {
                trace.destination_pid = pid;
                // A vCPU's first entry as a tracer attached at `at` sees it: the first
                // after it.
                trace.destination_vcpus = t.destination_vcpus.clone();
                for v in &mut trace.destination_vcpus {
                    v.first_enter_ns = v.first_enter_ns.max(at + 300_000);
                }
            }
            let mut host = HostTrace { pid, tap: Some(tap.into()), attached_ns: at, trace, ..HostTrace::default() };
            let clock = HostClock { offset_ns: [0, B_AHEAD_NS][i], ..HostClock::local() };
            host.map_stamps(|ns| (ns as i64 + clock.offset_ns) as u64);
            (["a", "b"][i].to_owned(), host, clock, false)
        };
        vec![side(0), side(1)]
    }

    fn timeline_of(o: &MigrationOutcome, trace: &Trace, destination_tap: &str) -> Timeline {
        timeline::assemble(&Input {
            outcome: o,
            trace: Some(trace),
            qemu_versions: Versions::both(Some((7, 2))),
            clock: WallClock::from_pair(o.start_ns, o.start_unix_us),
            destination_tap: Some(destination_tap),
            probe_ident: Some(13492),
        })
    }

    /// The migration measured from two hosts' traces, merged, whose QEMUs had `pid`.
    fn merged(r: &MigrationRecord, pid: u32, attached: [u64; 2]) -> (Traced, Timeline) {
        let traced = merge_host_traces(as_two_hosts(r, pid, attached));
        let mut o = r.outcome.clone();
        (o.source_pid, o.destination_pid) = (traced.trace.source_pid, traced.trace.destination_pid);
        let timeline = timeline_of(&o, &traced.trace, traced.destination_tap.as_deref().expect("tap"));
        (traced, timeline)
    }

    #[test]
    fn two_hosts_qemus_with_the_same_pid_keep_their_own_stamps() {
        let r = recorded();
        let one_tracer = timeline_of(&r.outcome, r.trace.as_ref().expect("trace"), "tap-b");
        assert!(one_tracer.missing.is_empty(), "{:?}", one_tracer.missing);
        // The destination's QEMU went active (1.44 ms) before the source did (2.44 ms):
        // mixed in with the source's, it would end the setup early.
        let (traced, two_hosts) = merged(&r, 4242, [0, 0]);
        assert_eq!(two_hosts.marks, one_tracer.marks);
        assert_eq!(two_hosts.phases, one_tracer.phases);
        assert_eq!(two_hosts.rounds, one_tracer.rounds);
        assert!(two_hosts.missing.is_empty(), "{:?}", two_hosts.missing);
        let t = &traced.trace;
        assert!(t.phases.iter().all(|p| p.tgid == 4242 && p.host.is_some()));
        assert_eq!(
            t.destination_host.as_ref().map(|h| (h.name.as_str(), h.attached_ns)),
            Some(("b", r.outcome.start_ns))
        );
    }

    #[test]
    fn a_destination_attached_after_the_resume_yields_no_resume() {
        let r = recorded();
        // Attached 830 ms after the command: the destination resumed at 822.5 ms.
        let (traced, t) = merged(&r, 4242, [0, 830 * MS]);
        assert_eq!(
            traced.trace.destination_host.as_ref().map(|h| h.attached_ns),
            Some(r.outcome.start_ns + 830 * MS),
            "the attach time converted to our clock"
        );
        assert_eq!(t.marks.destination_resumed_ns, None, "its vCPU's first entry after 830 ms is not the resume");
        assert!(t.vcpus.iter().all(|v| v.host == timeline::Host::Source), "{:?}", t.vcpus);
        let why = t.missing.iter().find(|m| m.starts_with("destination-resumed:")).expect("said why");
        assert!(
            why.contains("attached to its QEMU at 830.000 ms") && why.contains("after the source stopped"),
            "{why}"
        );
        let measures = super::downtime::compute(&r.outcome, &t, None, None);
        assert_eq!(measures.downtime_ms.vcpu, None);
        assert!(measures.missing.iter().any(|m| m.starts_with("downtime_ms.vcpu:")), "{:?}", measures.missing);
        // Attached during the load (100 ms; it ran from 1.49 to 822 ms), before the source
        // stopped: its resume stands; the load, under way, shows neither end, and that
        // is said.
        let one_tracer = timeline_of(&r.outcome, r.trace.as_ref().expect("trace"), "tap-b");
        let (_, t) = merged(&r, 4242, [0, 100 * MS]);
        assert_eq!(t.marks.destination_resumed_ns, one_tracer.marks.destination_resumed_ns);
        assert_eq!(t.marks.destination_loaded_ns, None);
        assert!(t.phase("destination receive").is_none() && t.phase("destination load + resume").is_some());
        for what in ["destination receive", "destination-loaded"] {
            let said = format!("{what}: the destination's tracer attached to its QEMU at 100.000 ms");
            assert!(t.missing.iter().any(|m| m.starts_with(&said)), "{what}: {:?}", t.missing);
        }
    }
}
