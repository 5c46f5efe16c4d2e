//! Two libvirt hosts that migrate one domain back and forth, through the `virt` crate.
//!
//! Client-driven (`virDomainMigrate3`: this process talks to both daemons) or
//! peer-to-peer (`virDomainMigrateToURI3` with PEER2PEER: the source daemon talks to the
//! destination's); bandwidth through libvirt's migration parameters, the downtime limit
//! through `virDomainMigrateSetMaxDowntime`. After each migration libvirt's completed
//! job statistics on both sides are the `reported` figures, labelled as libvirt's.
//!
//! The domain must be persistent: its definition stays on the source, where libvirt
//! keeps the completed job's statistics, and the next migration brings it back.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use virt::{
    connect::Connect,
    domain::{Domain, JobStats, MigrateParameters},
    sys,
};

use super::{
    GuestCheck, HostPair, Machine, MigrationOutcome, MigrationParams, RamStats, ReportedStats, Status, Versions,
};
use crate::{
    clock::{WallClock, monotonic_ns},
    sys::ssh::SshTarget,
};

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("connecting to libvirt at {uri}: {message} (is libvirtd running there, and may this user connect?)")]
    Connect { uri: String, message: String },
    #[error("domain {domain} on {host}: {message}")]
    Domain { domain: String, host: String, message: String },
    #[error("domain {domain} runs on neither host ({hosts}): start it on one of them")]
    NotRunning { domain: String, hosts: String },
    #[error(
        "domain {domain} is not persistent on {host}: define it (virsh define) so its job statistics survive a migration"
    )]
    NotPersistent { domain: String, host: String },
    #[error("domain {domain}: {message}")]
    Xml { domain: String, message: String },
    #[error(
        "{uri} names no host to start a tracing agent on over ssh: give the agent command (--agent-source/--agent-destination, agent_source/agent_destination) or trace here (--agents local)"
    )]
    NoHost { uri: String },
}

/// How libvirt migrates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibvirtFlags {
    /// Peer to peer: the source daemon drives the migration (VIR_MIGRATE_PEER2PEER).
    pub p2p: bool,
    /// The migration stream goes through the daemons' connection (needs `p2p`).
    pub tunnelled: bool,
    /// QEMU throttles the guest's vCPUs when pre-copy does not converge.
    pub auto_converge: bool,
    /// QEMU compresses the stream (VIR_MIGRATE_COMPRESSED, libvirt's default method).
    pub compressed: bool,
}

impl LibvirtFlags {
    fn bits(&self) -> u32 {
        let mut f = sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_PERSIST_DEST;
        for (on, bit) in [
            (self.p2p || self.tunnelled, sys::VIR_MIGRATE_PEER2PEER),
            (self.tunnelled, sys::VIR_MIGRATE_TUNNELLED),
            (self.auto_converge, sys::VIR_MIGRATE_AUTO_CONVERGE),
            (self.compressed, sys::VIR_MIGRATE_COMPRESSED),
        ] {
            if on {
                f |= bit;
            }
        }
        f
    }
}

/// One libvirt host: how this process reaches its daemon, how the other daemon does
/// (peer to peer), and the name records use for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibvirtHost {
    pub name: String,
    pub uri: String,
    /// The URI the other host's daemon uses to reach this one (p2p); default `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_uri: Option<String>,
    /// The guest's serial console as a file this process can read, if it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<PathBuf>,
}

impl LibvirtHost {
    /// A host known only by URI: named after the URI's host (`qemu+ssh://root@h1:2222/system`
    /// → `h1`, `qemu+ssh://[fd00::2]/system` → `fd00::2`), or `fallback` for a local URI.
    pub fn from_uri(uri: &str, fallback: &str) -> Self {
        let name = uri_host(uri).unwrap_or_else(|| fallback.to_owned());
        Self { name, uri: uri.to_owned(), peer_uri: None, console: None }
    }

    /// How ssh reaches this host as its URI says libvirt does: over an ssh transport
    /// (`+ssh`, `+libssh`, `+libssh2`) as the URI's user, at its port, with its `keyfile`
    /// (and `no_verify`); over another transport (tcp, tls) the host alone, as ssh's
    /// defaults have it (the URI's port and user are libvirt's there, not ssh's).
    pub fn ssh(&self) -> Result<SshTarget, LibvirtError> {
        let no_host = || LibvirtError::NoHost { uri: self.uri.clone() };
        let url = url::Url::parse(&self.uri).map_err(|_| no_host())?;
        let host = uri_host(&self.uri).ok_or_else(no_host)?;
        let transport = url.scheme().split_once('+').map(|(_, t)| t);
        if !matches!(transport, Some("ssh" | "libssh" | "libssh2")) {
            return Ok(SshTarget { host, ..SshTarget::default() });
        }
        let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy().into_owned();
        let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        Ok(SshTarget {
            host,
            user: Some(user).filter(|u| !u.is_empty()),
            port: url.port(),
            keyfile: param("keyfile"),
            no_verify: param("no_verify").is_some_and(|v| v != "0"),
        })
    }
}

/// The host a libvirt URI names, an IPv6 address without its brackets; None for a local
/// URI (`qemu:///system`) or one that does not parse.
fn uri_host(uri: &str) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    let host = match url.host()? {
        url::Host::Domain(d) => percent_encoding::percent_decode_str(d).decode_utf8_lossy().into_owned(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => a.to_string(),
    };
    (!host.is_empty()).then_some(host)
}

/// What the domain definition says about the machine and its network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainInfo {
    /// `kvm` or `qemu` (TCG).
    pub kind: String,
    pub emulator: Option<String>,
    pub memory_kib: u64,
    pub vcpus: u32,
    /// MAC of the first network interface.
    pub mac: Option<String>,
    /// Its tap on the current host (live XML only).
    pub tap: Option<String>,
    pub cmdline: Option<String>,
}

/// Reads the parts of a domain's XML migtrace needs.
pub fn parse_domain_xml(xml: &str) -> Result<DomainInfo, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("domain XML: {e}"))?;
    let root = doc.root_element();
    fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
        node.children().find(|c| c.has_tag_name(name))
    }
    let text = |node: Option<roxmltree::Node<'_, '_>>| node.and_then(|n| n.text()).map(|t| t.trim().to_owned());
    let memory = child(root, "memory").ok_or("domain XML has no <memory>")?;
    let unit = memory.attribute("unit").unwrap_or("KiB");
    let amount: u64 = text(Some(memory)).and_then(|t| t.parse().ok()).ok_or("domain XML: <memory> is not a number")?;
    let memory_kib = match unit {
        "b" | "bytes" => amount / 1024,
        "KiB" | "k" => amount,
        "MiB" | "M" => amount << 10,
        "GiB" | "G" => amount << 20,
        "KB" => amount * 1000 / 1024,
        "MB" => amount * 1_000_000 / 1024,
        other => return Err(format!("domain XML: <memory unit='{other}'> not understood")),
    };
    let devices = child(root, "devices");
    let interface = devices.and_then(|d| child(d, "interface"));
    Ok(DomainInfo {
        kind: root.attribute("type").unwrap_or_default().to_owned(),
        emulator: text(devices.and_then(|d| child(d, "emulator"))),
        memory_kib,
        vcpus: text(child(root, "vcpu")).and_then(|t| t.parse().ok()).unwrap_or(1),
        mac: interface.and_then(|i| child(i, "mac")).and_then(|m| m.attribute("address")).map(str::to_owned),
        tap: interface.and_then(|i| child(i, "target")).and_then(|t| t.attribute("dev")).map(str::to_owned),
        cmdline: text(child(root, "os").and_then(|os| child(os, "cmdline"))),
    })
}

/// libvirt's completed job statistics as the record's reported figures.
pub fn reported_stats(s: &JobStats) -> ReportedStats {
    ReportedStats {
        reported_by: Some("libvirt job stats".into()),
        status: s.success.map(|ok| if ok { "completed" } else { "failed" }.to_owned()),
        total_time: s.time_elapsed,
        downtime: s.downtime,
        setup_time: s.setup_time,
        expected_downtime: None,
        error_desc: s.error_message.clone(),
        ram: Some(RamStats {
            transferred: s.mem_processed,
            remaining: s.mem_remaining,
            total: s.mem_total,
            duplicate: s.mem_constant,
            normal: s.mem_normal,
            normal_bytes: s.mem_normal_bytes,
            dirty_sync_count: s.mem_iteration,
            dirty_pages_rate: s.mem_dirty_rate,
            mbps: s.mem_bps.map(|b| b as f64 * 8.0 / 1e6),
            ..RamStats::default()
        }),
    }
}

/// libvirt's version number (major × 1,000,000 + minor × 1,000 + micro) as a release.
fn release(v: u32) -> (u32, u32, u32) {
    (v / 1_000_000, v / 1000 % 1000, v % 1000)
}

fn message(e: &virt::error::Error) -> String {
    e.message().to_owned()
}

/// A migration running in a blocking thread, and how to abort it from outside.
struct Running {
    task: tokio::task::JoinHandle<Result<(), String>>,
}

/// Two libvirt hosts and the domain that moves between them.
pub struct LibvirtPair {
    pub domain: String,
    pub hosts: [LibvirtHost; 2],
    pub flags: LibvirtFlags,
    conns: [Arc<Mutex<Option<Connect>>>; 2],
    /// Index of the host the domain runs on.
    current: usize,
    /// Length of each host's console file when the last migration started.
    console_mark: [u64; 2],
    info: DomainInfo,
    /// Each host's QEMU release (libvirt's hypervisor version), read from its own daemon.
    hyp_versions: [Option<(u32, u32, u32)>; 2],
}

impl LibvirtPair {
    /// Connects to both hosts and finds where the domain runs.
    pub fn open(domain: &str, hosts: [LibvirtHost; 2], flags: LibvirtFlags) -> Result<Self, LibvirtError> {
        // libvirt prints every error to stderr by default; ours carry them instead.
        virt::error::clear_error_callback();
        let connect = |h: &LibvirtHost| {
            Connect::open(Some(&h.uri)).map_err(|e| LibvirtError::Connect { uri: h.uri.clone(), message: message(&e) })
        };
        let conns = [connect(&hosts[0])?, connect(&hosts[1])?];
        let mut current = None;
        for (i, c) in conns.iter().enumerate() {
            if let Ok(dom) = c.lookup_domain_by_name(domain)
                && dom.is_active().unwrap_or(false)
            {
                if !dom.is_persistent().unwrap_or(false) {
                    return Err(LibvirtError::NotPersistent { domain: domain.into(), host: hosts[i].name.clone() });
                }
                current = Some(i);
                break;
            }
        }
        let Some(current) = current else {
            return Err(LibvirtError::NotRunning {
                domain: domain.into(),
                hosts: format!("{}, {}", hosts[0].uri, hosts[1].uri),
            });
        };
        let dom = conns[current].lookup_domain_by_name(domain).map_err(|e| LibvirtError::Domain {
            domain: domain.into(),
            host: hosts[current].name.clone(),
            message: message(&e),
        })?;
        let xml = dom.xml_desc(0).map_err(|e| LibvirtError::Domain {
            domain: domain.into(),
            host: hosts[current].name.clone(),
            message: message(&e),
        })?;
        let info = parse_domain_xml(&xml).map_err(|message| LibvirtError::Xml { domain: domain.into(), message })?;
        let hyp_versions = conns.each_ref().map(|c| c.hyp_version().ok().map(release));
        let [a, b] = conns;
        Ok(Self {
            domain: domain.into(),
            hosts,
            flags,
            conns: [Arc::new(Mutex::new(Some(a))), Arc::new(Mutex::new(Some(b)))],
            current,
            console_mark: [0; 2],
            info,
            hyp_versions,
        })
    }

    /// A pair that has not connected to its hosts, for tests of what it derives from
    /// them (the domain runs on the first).
    #[cfg(test)]
    pub(crate) fn unconnected_for_test(hosts: [LibvirtHost; 2], hyp_versions: [Option<(u32, u32, u32)>; 2]) -> Self {
        Self {
            domain: "test".into(),
            hosts,
            flags: LibvirtFlags::default(),
            conns: [Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None))],
            current: 0,
            console_mark: [0; 2],
            info: DomainInfo::default(),
            hyp_versions,
        }
    }

    /// The domain definition as read when the pair was opened.
    pub fn info(&self) -> &DomainInfo {
        &self.info
    }

    /// The host the domain runs on now.
    pub fn current(&self) -> usize {
        self.current
    }

    fn conn(&self, i: usize) -> Result<Connect, String> {
        let guard = self.conns[i].lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(c) if c.is_alive().unwrap_or(false) => Ok(c.clone()),
            _ => {
                drop(guard);
                let c = Connect::open(Some(&self.hosts[i].uri))
                    .map_err(|e| format!("connecting to {}: {}", self.hosts[i].uri, message(&e)))?;
                *self.conns[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                Ok(c)
            }
        }
    }

    fn lookup(&self, i: usize) -> Result<Domain, String> {
        self.conn(i)?
            .lookup_domain_by_name(&self.domain)
            .map_err(|e| format!("domain {} on {}: {}", self.domain, self.hosts[i].name, message(&e)))
    }

    fn completed_stats(&self, i: usize) -> Option<ReportedStats> {
        let dom = self.lookup(i).ok()?;
        completed_job_stats(&dom).map(|s| reported_stats(&s))
    }

    fn console_len(&self, i: usize) -> u64 {
        self.hosts[i].console.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len())
    }

    fn start_migration(&self, src: usize, dst: usize, params: &MigrationParams) -> Result<Running, String> {
        let dom = self.lookup(src)?;
        if !dom.is_active().unwrap_or(false) {
            return Err(format!("domain {} is not running on {}", self.domain, self.hosts[src].name));
        }
        if let Some(ms) = params.downtime_limit_ms {
            dom.migrate_set_max_downtime(ms, 0).map_err(|e| format!("setting the downtime limit: {}", message(&e)))?;
        }
        let mp = MigrateParameters { bandwidth: params.max_bandwidth.map(|b| (b >> 20).max(1)), ..Default::default() };
        let flags = self.flags.bits();
        let task = if self.flags.p2p || self.flags.tunnelled {
            let peer = self.hosts[dst].peer_uri.clone().unwrap_or_else(|| self.hosts[dst].uri.clone());
            tokio::task::spawn_blocking(move || dom.migrate_to_uri3(Some(&peer), mp, flags).map_err(|e| message(&e)))
        } else {
            let dconn = self.conn(dst)?;
            tokio::task::spawn_blocking(move || dom.migrate3(&dconn, mp, flags).map(|_| ()).map_err(|e| message(&e)))
        };
        Ok(Running { task })
    }
}

/// The domain's completed job statistics, if libvirt has any. (virt 0.5's `job_stats`
/// builds a Vec from libvirt's pointer even when libvirt returns none, and never frees
/// what libvirt allocated: this copies the parameters and frees libvirt's.)
fn completed_job_stats(dom: &Domain) -> Option<JobStats> {
    let mut kind: std::os::raw::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: std::os::raw::c_int = 0;
    // SAFETY: valid domain pointer and out-parameters; libvirt allocates `params`.
    let rc = unsafe {
        sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut n, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
    };
    if rc < 0 || params.is_null() || n <= 0 {
        return None;
    }
    // SAFETY: libvirt returned `n` initialised parameters at `params`; they are copied
    // (strings stay libvirt's until freed below, after the conversion read them).
    let copied = unsafe { std::slice::from_raw_parts(params, n as usize) }.to_vec();
    let stats = JobStats::from((kind, copied));
    // SAFETY: freeing exactly what libvirt allocated for us.
    unsafe { sys::virTypedParamsFree(params, n) };
    (kind != sys::VIR_DOMAIN_JOB_NONE as i32).then_some(stats)
}

/// Aborts the migration job of `domain` on `conn` (from outside the blocked call).
fn abort_job(conn: &Connect, domain: &str) -> Result<(), String> {
    let dom = conn.lookup_domain_by_name(domain).map_err(|e| message(&e))?;
    // SAFETY: a valid domain pointer for the duration of the call; virt 0.5 wraps no
    // abort, the function is part of libvirt's stable API.
    let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 { Err(message(&virt::error::Error::last_error())) } else { Ok(()) }
}

impl HostPair for LibvirtPair {
    type Error = LibvirtError;

    /// libvirt does not say; the hosts' tracers find the processes.
    fn pids(&self) -> (u32, u32) {
        (0, 0)
    }

    fn endpoints(&self) -> (String, String) {
        (self.hosts[self.current].name.clone(), self.hosts[1 - self.current].name.clone())
    }

    fn hypervisor_versions(&self) -> Versions {
        let of = |i: usize| self.hyp_versions[i].map(|(a, b, _)| (a, b));
        Versions { source: of(self.current), destination: of(1 - self.current) }
    }

    fn machine(&self) -> Machine {
        let (accelerator, reason) = match self.info.kind.as_str() {
            "kvm" => ("kvm", None),
            "qemu" => ("tcg", Some("the domain is defined with type='qemu' (software emulation)".to_owned())),
            other => (other, None),
        };
        Machine {
            hypervisor: "qemu (libvirt)".into(),
            version: {
                let of = |i: usize| self.hyp_versions[i].map(|(a, b, c)| format!("{a}.{b}.{c}")).unwrap_or_default();
                let (src, dst) = (of(self.current), of(1 - self.current));
                if src == dst { src } else { format!("{src} → {dst}") }
            },
            description: format!(
                "libvirt {} hosts {} and {}",
                self.conn(self.current)
                    .ok()
                    .and_then(|c| c.lib_version().ok())
                    .map(release)
                    .map_or_else(|| "?".into(), |(a, b, c)| format!("{a}.{b}.{c}")),
                self.hosts[0].name,
                self.hosts[1].name
            ),
            binary: self.info.emulator.clone().unwrap_or_default(),
            accelerator: accelerator.into(),
            accelerator_reason: reason,
            ram_bytes: self.info.memory_kib * 1024,
            vcpus: self.info.vcpus,
            workarounds: Vec::new(),
            host_kernel: String::new(),
            guest: String::new(),
            dirty_ring: None,
        }
    }

    async fn migrate(&mut self, params: &MigrationParams) -> Result<MigrationOutcome, LibvirtError> {
        let (src, dst) = (self.current, 1 - self.current);
        let direction = format!("{} → {}", self.hosts[src].name, self.hosts[dst].name);
        self.console_mark = [self.console_len(0), self.console_len(1)];
        let clock = WallClock::now();
        let start_ns = monotonic_ns();
        let outcome = |status, error: Option<String>, end_ns, stats, destination_stats| MigrationOutcome {
            status,
            error,
            direction: direction.clone(),
            source_pid: 0,
            destination_pid: 0,
            start_unix_us: clock.to_unix_us(start_ns),
            start_ns,
            end_ns,
            stats,
            destination_stats,
            source_events: Vec::new(),
            destination_events: Vec::new(),
        };
        let running = match tokio::task::block_in_place(|| self.start_migration(src, dst, params)) {
            Ok(r) => r,
            Err(e) => return Ok(outcome(Status::Failed, Some(e), None, ReportedStats::default(), None)),
        };
        let timeout = Duration::from_secs_f64(params.timeout_s);
        let mut task = running.task;
        let result: Result<(), (Status, String)> = match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => {
                // Say which host let it down when one is gone.
                let reach = |i: usize| {
                    Connect::open(Some(&self.hosts[i].uri)).and_then(|c| c.hyp_version()).err().map(|e| {
                        format!(
                            " (host {} at {} is unreachable: {})",
                            self.hosts[i].name,
                            self.hosts[i].uri,
                            message(&e)
                        )
                    })
                };
                let why = tokio::task::block_in_place(|| reach(dst).or_else(|| reach(src))).unwrap_or_default();
                Err((Status::Failed, format!("{direction}: {e}{why}")))
            }
            Ok(Err(join)) => Err((Status::Failed, format!("the migration call failed: {join}"))),
            Err(_) => {
                let aborted = tokio::task::block_in_place(|| self.conn(src).and_then(|c| abort_job(&c, &self.domain)));
                // The blocked call returns once libvirt has cancelled the job.
                let _ = tokio::time::timeout(Duration::from_secs(60), &mut task).await;
                Err((
                    Status::TimedOut,
                    format!(
                        "migration did not complete within {:.0} s and was aborted{} (not converging? try a larger bandwidth or downtime limit, or auto-converge)",
                        params.timeout_s,
                        aborted.err().map_or_else(String::new, |e| format!(" (abort: {e})"))
                    ),
                ))
            }
        };
        let end_ns = result.is_ok().then(monotonic_ns);
        let stats = tokio::task::block_in_place(|| self.completed_stats(src)).unwrap_or_default();
        let destination_stats = tokio::task::block_in_place(|| self.completed_stats(dst));
        Ok(match result {
            Ok(()) => outcome(Status::Completed, None, end_ns, stats, destination_stats),
            Err((status, e)) => {
                let e = match &stats.error_desc {
                    Some(desc) if !e.contains(desc.as_str()) => format!("{e}: {desc}"),
                    _ => e,
                };
                outcome(status, Some(e), None, stats, destination_stats)
            }
        })
    }

    fn guest_check(&self) -> Option<GuestCheck> {
        // After a completed migration the guest runs on the other host; only what its
        // console took since the migration started counts.
        let dst = 1 - self.current;
        let path = self.hosts[dst].console.as_ref()?;
        let bytes = std::fs::read(path).ok()?;
        let from = (self.console_mark[dst] as usize).min(bytes.len());
        Some(super::console::check_console(&bytes[from..]))
    }

    async fn prepare_next(&mut self) -> Result<(), LibvirtError> {
        // libvirt prepares each destination itself: the domain now runs on the other host.
        self.current = 1 - self.current;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_live_domain_xml() {
        // Excerpt of `virsh dumpxml` (libvirt 9.0) of the libvirt lab's guest.
        let xml = r#"<domain type='qemu' id='1'>
  <name>migtrace-1a2b3c</name>
  <memory unit='KiB'>262152</memory>
  <currentMemory unit='KiB'>262152</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><kernel>/var/cache/migtrace/vmlinuz</kernel>
    <cmdline>console=ttyS0 migtrace.ip=10.78.0.10/24 migtrace.workload=wset=64M,rate=20000</cmdline></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'><mac address='52:54:00:4d:54:02'/><source bridge='br0'/>
      <target dev='vnet0'/><model type='virtio'/></interface>
  </devices>
</domain>"#;
        let d = parse_domain_xml(xml).expect("parses");
        assert_eq!((d.kind.as_str(), d.memory_kib, d.vcpus), ("qemu", 262152, 1));
        assert_eq!(d.emulator.as_deref(), Some("/usr/bin/qemu-system-x86_64"));
        assert_eq!((d.mac.as_deref(), d.tap.as_deref()), (Some("52:54:00:4d:54:02"), Some("vnet0")));
        assert!(d.cmdline.is_some_and(|c| c.contains("migtrace.workload=")));
        let mib = parse_domain_xml("<domain type='kvm'><memory unit='MiB'>512</memory></domain>").expect("parses");
        assert_eq!(mib.memory_kib, 512 << 10);
        assert!(parse_domain_xml("<domain/>").is_err());
        assert!(parse_domain_xml("not xml").is_err());
    }

    #[test]
    fn job_stats_map_onto_reported_figures_labelled_as_libvirts() {
        let s = JobStats {
            r#type: 3,
            time_elapsed: Some(1812),
            downtime: Some(64),
            setup_time: Some(3),
            mem_processed: Some(120_000_000),
            mem_total: Some(268_435_456),
            mem_remaining: Some(0),
            mem_iteration: Some(4),
            mem_bps: Some(125_000_000),
            success: Some(true),
            ..Default::default()
        };
        let r = reported_stats(&s);
        assert_eq!(r.reported_by.as_deref(), Some("libvirt job stats"));
        assert_eq!(
            (r.total_time, r.downtime, r.setup_time, r.status.as_deref()),
            (Some(1812), Some(64), Some(3), Some("completed"))
        );
        let ram = r.ram.expect("ram");
        assert_eq!((ram.transferred, ram.total, ram.dirty_sync_count), (Some(120_000_000), Some(268_435_456), Some(4)));
        assert_eq!(ram.mbps, Some(1000.0));
    }

    #[test]
    fn hosts_are_named_after_their_uri() {
        assert_eq!(LibvirtHost::from_uri("qemu+ssh://root@h1.example:22/system", "x").name, "h1.example");
        assert_eq!(LibvirtHost::from_uri("qemu+tcp://10.78.0.2/system", "x").name, "10.78.0.2");
        assert_eq!(LibvirtHost::from_uri("qemu+ssh://root@[fd00::2]:2222/system", "x").name, "fd00::2");
        assert_eq!(LibvirtHost::from_uri("qemu:///system", "source").name, "source");
        assert_eq!(LibvirtHost::from_uri("qemu+unix:///system?socket=/run/a/sock", "a").name, "a");
    }

    #[test]
    fn ssh_logs_in_where_and_as_libvirt_does() {
        let ssh = |uri: &str| LibvirtHost::from_uri(uri, "x").ssh();
        let t = ssh("qemu+ssh://ops@h1.example:2222/system?keyfile=/root/.ssh/lab%20key&no_verify=1").expect("ssh");
        assert_eq!(
            t,
            SshTarget {
                host: "h1.example".into(),
                user: Some("ops".into()),
                port: Some(2222),
                keyfile: Some("/root/.ssh/lab key".into()),
                no_verify: true,
            }
        );
        // IPv6: the address without brackets (ssh takes it so), the port apart.
        let t = ssh("qemu+ssh://root@[fd00::2]:2222/system").expect("ssh");
        assert_eq!((t.host.as_str(), t.user.as_deref(), t.port), ("fd00::2", Some("root"), Some(2222)));
        assert_eq!(ssh("qemu+libssh2://u@h/system").expect("ssh").user.as_deref(), Some("u"));
        // No user or port: ssh's own defaults (and the user's ssh configuration).
        let t = ssh("qemu+ssh://h1/system").expect("ssh");
        assert_eq!((t.user, t.port), (None, None));
        // tcp and tls: the user and port are libvirt's, not ssh's.
        let t = ssh("qemu+tcp://sasl-user@10.78.0.2:16509/system").expect("ssh");
        assert_eq!(t, SshTarget { host: "10.78.0.2".into(), ..SshTarget::default() });
        // A local URI names no host: the error says what to do instead.
        for local in ["qemu:///system", "qemu+unix:///system?socket=/run/a/sock", "not a uri"] {
            let e = ssh(local).expect_err("no host").to_string();
            assert!(e.contains("names no host") && e.contains("--agent-source"), "{e}");
        }
    }

    #[test]
    fn flags_follow_the_options() {
        let none = LibvirtFlags::default().bits();
        assert_eq!(none, sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_PERSIST_DEST);
        let t = LibvirtFlags { tunnelled: true, ..Default::default() }.bits();
        assert_ne!(t & sys::VIR_MIGRATE_PEER2PEER, 0, "tunnelled implies peer to peer");
        assert_ne!(
            LibvirtFlags { auto_converge: true, ..Default::default() }.bits() & sys::VIR_MIGRATE_AUTO_CONVERGE,
            0
        );
    }
}
