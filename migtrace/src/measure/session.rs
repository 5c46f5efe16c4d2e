//! A measured migration: tracing, the paper's ping and migtrace's probe sender around
//! one migration of a [`HostPair`], turned into one [`MigrationRecord`].

use std::{net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    downtime::{self, ProbeSummary},
    heartbeat, memcheck,
    ping::Ping,
    prober::Prober,
    record::MigrationRecord,
    timeline::{self, Timeline},
};
use crate::{
    clock::WallClock,
    hypervisor::{HostPair, MigrationParams},
    probe::tracer::{TraceError, Tracer},
};

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
    /// Observation after it completes (announce rounds, first packets, late replies).
    pub settle: Duration,
    /// With the probe sender and tracing on, observation continues past `settle` until
    /// the guest answers a probe sent after the migration, up to this long in all.
    pub settle_max: Duration,
    /// Keep the raw trace in the record.
    pub keep_trace: bool,
    /// Ask the guest agent to check its working set after each completed migration,
    /// waiting this long for the answer; None: no check.
    pub memory_check: Option<Duration>,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        Self {
            trace: true,
            ping_interval: Some(Duration::from_millis(50)),
            probe_interval: Some(Duration::from_millis(1)),
            preroll: Duration::from_millis(300),
            settle: Duration::from_millis(1000),
            settle_max: Duration::from_secs(10),
            keep_trace: false,
            memory_check: Some(Duration::from_secs(5)),
        }
    }
}

/// Where the guest is reachable from, and the taps its packets cross.
#[derive(Clone, Debug)]
pub struct Network {
    /// Network namespace to send probes from (the lab's), None for the current one.
    pub ns: Option<String>,
    pub guest: Ipv4Addr,
    pub taps: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Hosts(E),
}

/// Observes migrations of one host pair.
pub struct Session {
    tracer: Option<Tracer>,
    pub options: MeasureOptions,
    network: Network,
}

impl Session {
    /// Starts tracing (if enabled). Must be called within a tokio runtime, as root.
    pub fn start(network: Network, options: MeasureOptions) -> Result<Self, TraceError> {
        let tracer = if options.trace {
            let taps: Vec<&str> = network.taps.clone();
            Some(Tracer::start(network.ns.as_deref().map(|ns| (ns, taps.as_slice())))?)
        } else {
            None
        };
        Ok(Self { tracer, options, network })
    }

    /// Migrates once and measures it every way.
    pub async fn migrate<P: HostPair>(
        &mut self,
        pair: &mut P,
        params: &MigrationParams,
        repetition: u32,
        treatment: &str,
    ) -> Result<MigrationRecord, SessionError<P::Error>> {
        let (src, dst) = pair.pids();
        let (src_host, dst_host) = pair.endpoints();
        // A guest without network: no ping, no probe sender; those measures are missing.
        let offline = pair.guest_offline();
        if let Some(t) = self.tracer.as_mut() {
            for pid in t.watched() {
                if pid != src && pid != dst {
                    t.unwatch(pid)?;
                }
            }
            t.watch(src)?;
            t.watch(dst)?;
            t.begin(src, dst).await?;
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
        tokio::time::sleep(self.options.preroll).await;

        let result = pair.migrate(params).await;
        if let Ok(outcome) = &result {
            tokio::time::sleep(self.options.settle).await;
            // A guest can stay silent long after its vCPUs resumed: keep watching until
            // it answers a request sent after the migration ended, or settle_max.
            if let (Some(t), Some(p), Some(end)) = (self.tracer.as_ref(), prober.as_ref(), outcome.end_ns) {
                let deadline =
                    tokio::time::Instant::now() + self.options.settle_max.saturating_sub(self.options.settle);
                while !t.answered_since(p.ident, end).await && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let prober = prober.map(|p| tokio::task::block_in_place(|| p.stop()));
        let ping = ping.map(|p| tokio::task::block_in_place(|| p.stop()));
        // Heartbeats up to now: the check below pauses the guest's pattern (not its
        // heartbeats), but the observation ends here.
        let heartbeats = pair.heartbeats(observed_from);
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
        let trace = match self.tracer.as_mut() {
            Some(t) => Some(t.finish(src, dst).await?),
            None => None,
        };
        let outcome = result.map_err(SessionError::Hosts)?;

        let mut timeline: Timeline = timeline::assemble(&timeline::Input {
            outcome: &outcome,
            trace: trace.as_ref(),
            qemu_version: pair.hypervisor_version().unwrap_or((7, 2)),
            clock: WallClock::from_pair(outcome.start_ns, outcome.start_unix_us),
            destination_tap: Some(dst_host.as_str()).filter(|h| !h.is_empty()),
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
            .filter(|_| outcome.status == crate::hypervisor::Status::Completed)
            .map(|beats| heartbeat::summarise(&beats, &src_host, &dst_host, outcome.start_ns));
        if let Some(first) = heartbeat.as_ref().and_then(|h| h.first_destination_ns) {
            heartbeat::add_phase(&mut timeline, first);
        }
        let (mut downtime_ms, migration_time_ms, mut missing) =
            downtime::compute(&outcome, &timeline, ping.as_ref(), probe.as_ref());
        if let Some(why) = &offline {
            for m in missing.iter_mut() {
                if let Some((measure, _)) = m.split_once(": ")
                    && matches!(measure, "downtime_ms.ping" | "downtime_ms.probe_gap")
                {
                    *m = format!("{measure}: {why}");
                }
            }
        }
        if let Some(h) = &heartbeat {
            downtime_ms.heartbeat_gap = h.gap_ms;
            if let Some(e) = &h.error {
                missing.push(format!("downtime_ms.heartbeat_gap: {e}"));
            }
        }
        let mut record = MigrationRecord::new(repetition, treatment.to_owned(), params.clone(), outcome);
        record.machine = Some(pair.machine());
        record.downtime_ms = downtime_ms;
        record.migration_time_ms = migration_time_ms;
        record.ping = ping;
        record.probe = probe;
        record.heartbeat = heartbeat;
        record.trace_health = trace.as_ref().map(|t| t.health.clone());
        let console = pair.guest_check();
        record.guest = (console.is_some() || memory_check.is_some()).then(|| {
            let mut g = console.unwrap_or_default();
            // No answer to any probe sent after the guest resumed: hung, or its network
            // is dead (the console check above tells a crash apart).
            g.unreachable =
                record.probe.as_ref().is_some_and(|p| {
                    p.error.is_none() && (p.open_gap_ms.is_some() || (p.gap_ms.is_none() && p.sent > 0))
                }) || record.heartbeat.as_ref().is_some_and(|h| h.destination == 0);
            match memory_check {
                Some(Ok(check)) => g.memory_check = Some(check),
                Some(Err(e)) => record.missing.push(format!("guest.memory_check: {e}")),
                None => {}
            }
            g
        });
        record.timeline = Some(timeline);
        record.missing.splice(0..0, missing);
        if self.options.keep_trace {
            record.trace = trace;
        }
        Ok(record)
    }

    /// Stops tracing and detaches everything.
    pub async fn stop(self) -> Result<(), TraceError> {
        if let Some(t) = self.tracer {
            t.stop().await?;
        }
        Ok(())
    }
}
