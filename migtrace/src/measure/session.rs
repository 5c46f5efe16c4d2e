//! A measured migration: tracing, the paper's ping and migtrace's probe sender around
//! one migration of a [`HostPair`], turned into one [`MigrationRecord`].

use std::{net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    downtime::{self, ProbeSummary},
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
        let (_, dst_host) = pair.endpoints();
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
        let ping = self.options.ping_interval.map(|i| Ping::start(self.network.ns.as_deref(), &guest, i));
        let prober = self.options.probe_interval.map(|i| Prober::start(self.network.ns.clone(), self.network.guest, i));
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
        let trace = match self.tracer.as_mut() {
            Some(t) => Some(t.finish(src, dst).await?),
            None => None,
        };
        let outcome = result.map_err(SessionError::Hosts)?;

        let timeline: Timeline = timeline::assemble(&timeline::Input {
            outcome: &outcome,
            trace: trace.as_ref(),
            qemu_version: pair.hypervisor_version(),
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
        let measures = downtime::compute(&outcome, &timeline, ping.as_ref(), probe.as_ref());
        let origin = outcome.start_ns;
        let mut record = MigrationRecord::new(repetition, treatment.to_owned(), params.clone(), outcome);
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
        record.trace_health = trace.as_ref().map(|t| t.health.clone());
        record.guest = pair.guest_check().map(|mut g| {
            // The guest's own silence only: no answer, at the taps or at the sender's
            // socket, to any probe sent after it resumed. A classifier that saw too few
            // replies is a missing measure, not a hung guest.
            g.unreachable = record.probe.as_ref().is_some_and(|p| p.error.is_none() && p.open_gap_ms.is_some());
            g
        });
        record.timeline = Some(timeline);
        record.missing = measures.missing;
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
