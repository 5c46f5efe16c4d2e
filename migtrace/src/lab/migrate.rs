//! One migration in the lab, driven over QMP and observed through QMP events.

use std::time::Duration;

use qapi::qmp as q;
use tokio::time::Instant;

use super::{GuestKind, Lab, LabError, migration_uri, set_migration_parameters};
use crate::{
    clock::{WallClock, monotonic_ns},
    hypervisor::{Heartbeat, HostPair, MemoryCheck, MigrationOutcome, MigrationParams, ReportedStats, Status},
};

/// How long the destination may take to report running after the source completed.
const RESUME_GRACE: Duration = Duration::from_secs(20);

impl HostPair for Lab {
    type Error = LabError;

    fn pids(&self) -> (u32, u32) {
        (self.source.as_ref().map_or(0, |q| q.pid), self.destination.as_ref().map_or(0, |q| q.pid))
    }

    fn endpoints(&self) -> (String, String) {
        let tap = |q: &Option<super::qemu::Qemu>| q.as_ref().map_or_else(String::new, |q| q.tap.to_owned());
        (tap(&self.source), tap(&self.destination))
    }

    fn hypervisor_versions(&self) -> crate::hypervisor::Versions {
        crate::hypervisor::Versions::both(self.qemu_version)
    }

    fn machine(&self) -> crate::hypervisor::Machine {
        self.machine_info()
    }

    async fn migrate(&mut self, params: &MigrationParams) -> Result<MigrationOutcome, LabError> {
        let (Some(src), Some(dst)) = (self.source.as_mut(), self.destination.as_mut()) else {
            return Err(LabError::Qemu(super::qemu::QemuError::EarlyExit {
                name: "lab".into(),
                status: "not running".into(),
                stderr: String::new(),
            }));
        };
        super::check_parameters(params, self.qemu_version)?;
        set_migration_parameters(src, params).await?;
        let (src_cursor, dst_cursor) = (src.qmp.event_count(), dst.qmp.event_count());
        let direction = format!("{} → {}", src.tap, dst.tap);
        let (source_pid, destination_pid) = (src.pid, dst.pid);
        let clock = WallClock::now();
        let start_ns = monotonic_ns();
        // QMP stamps are converted with this pair; records keep it (start_ns, start_unix_us).
        src.qmp
            .execute(q::migrate { uri: Some(migration_uri(dst.tap)), channels: None, detach: None, resume: None })
            .await?;

        let deadline = Instant::now() + Duration::from_secs_f64(params.timeout_s);
        // The source's final state decides; a dying destination or source ends the wait.
        let result: Result<(), (Status, String)> = tokio::select! {
            ev = src.qmp.wait_event(src_cursor, "the source's migration to end", deadline, |e| {
                matches!(e.migration_status(), Some("completed" | "failed" | "cancelled"))
            }) => match ev {
                Ok(e) if e.migration_status() == Some("completed") => Ok(()),
                Ok(e) => Err((Status::Failed, format!("source reported migration {}", e.migration_status().unwrap_or("?")))),
                Err(crate::hypervisor::qmp::QmpError::Timeout(..)) => Err((Status::TimedOut, format!(
                    "migration did not complete within {:.0} s (not converging? try a larger --max-bandwidth or --downtime-limit)",
                    params.timeout_s
                ))),
                Err(e) => Err((Status::Failed, e.to_string())),
            },
            status = dst.wait_exit() => Err((Status::Failed, format!("destination QEMU (pid {destination_pid}) exited during the migration: {status}"))),
        };
        let result = match result {
            Ok(()) => dst
                .qmp
                .wait_event(dst_cursor, "the destination to resume", Instant::now() + RESUME_GRACE, |e| {
                    e.event == "RESUME"
                })
                .await
                .map(|_| ())
                .map_err(|e| (Status::Failed, format!("destination did not resume: {e}"))),
            Err(e) => {
                if e.0 == Status::TimedOut {
                    let _ = src.qmp.execute(q::migrate_cancel {}).await;
                }
                // A source killed mid-migration closes its QMP socket as it exits: give
                // the kernel a moment to make it a zombie, then say what happened.
                let qmp_closed = src.qmp.closed();
                let mut exited = src.exited();
                for _ in 0..20 {
                    if exited || !qmp_closed {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    exited = src.exited();
                }
                if exited {
                    let status = src.wait_exit().await;
                    Err((
                        Status::Failed,
                        format!("source QEMU (pid {source_pid}) exited during the migration: {status}"),
                    ))
                } else {
                    Err(e)
                }
            }
        };
        let end_ns = result.is_ok().then(monotonic_ns);
        let stats =
            if src.exited() { ReportedStats::default() } else { src.qmp.query_migrate().await.unwrap_or_default() };
        let (status, error) = match result {
            Ok(()) => (Status::Completed, None),
            Err((status, error)) => {
                let error = match &stats.error_desc {
                    Some(desc) => format!("{error}: {desc}"),
                    None => error,
                };
                (status, Some(error))
            }
        };
        Ok(MigrationOutcome {
            status,
            error,
            direction,
            source_pid,
            destination_pid,
            start_unix_us: clock.to_unix_us(start_ns),
            start_ns,
            end_ns,
            stats,
            destination_stats: None,
            source_events: src.qmp.events_since(src_cursor),
            destination_events: dst.qmp.events_since(dst_cursor),
        })
    }

    fn guest_check(&self) -> Option<crate::hypervisor::GuestCheck> {
        // The destination's console holds only what the guest printed after it arrived.
        let dest = self.destination.as_ref()?;
        Some(crate::hypervisor::console::check_console(&std::fs::read(&dest.console).unwrap_or_default()))
    }

    async fn prepare_next(&mut self) -> Result<(), LabError> {
        self.swap_roles().await
    }

    async fn prepare_ahead(&mut self) -> Result<Option<u32>, LabError> {
        Lab::prepare_ahead(self).await
    }

    fn guest_offline(&self) -> Option<String> {
        (self.config.guest == GuestKind::Minimal).then(|| "the minimal guest has no network".to_owned())
    }

    async fn memory_check(&mut self, timeout: Duration) -> Option<Result<MemoryCheck, String>> {
        // After a completed migration the guest runs on the destination.
        let console = self.destination.as_ref()?.serial.as_ref()?;
        let pages = self.config.workload.wset.unwrap_or(0) / workloads::spec::PAGE_SIZE as u64;
        Some(console.memory_check(pages, timeout).await)
    }

    fn link(&self) -> Option<crate::hypervisor::link::LinkConfig> {
        Some(Lab::link(self).clone())
    }

    fn link_tx_bytes(&self) -> Option<u64> {
        let tap = self.source.as_ref()?.tap;
        super::netns::tx_bytes(&self.host_ns(tap), super::netns::LINK_IF)
    }

    fn heartbeats(&self, since_ns: u64) -> Option<Vec<Heartbeat>> {
        if self.config.guest != GuestKind::Minimal {
            return None;
        }
        let mut all: Vec<Heartbeat> = [&self.source, &self.destination]
            .into_iter()
            .flatten()
            .filter_map(|q| Some((q.tap, q.serial.as_ref()?)))
            .flat_map(|(tap, c)| {
                c.heartbeats_since(since_ns).into_iter().map(|ts_ns| Heartbeat { ts_ns, host: tap.into() })
            })
            .collect();
        all.sort_by_key(|h| h.ts_ns);
        Some(all)
    }
}
