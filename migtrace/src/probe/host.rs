//! Tracing one hypervisor host for one domain: what a `migtrace agent` does on each
//! host of a real pair (or migtrace itself, for a host that is this machine).
//!
//! The host does not know in advance which QEMU process it will trace: as a source it
//! is the running domain's, as a destination the one libvirt starts for the incoming
//! migration. Both are found by what identifies the domain on any host: its QEMU
//! process (`-name guest=DOMAIN`, in this host's network namespace) and its tap (the
//! interface whose MAC is the guest's with the first byte replaced, as libvirt names
//! them). A destination is polled for while the migration is on; the incoming QEMU
//! waits for libvirt's set-up long before the first guest page arrives.

use std::{fs, os::unix::fs::MetadataExt as _, path::PathBuf, process::Command};

use serde::{Deserialize, Serialize};

use super::tracer::{Trace, TraceError, Tracer};
use crate::sys::netns;

/// What a host does in a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Source,
    Destination,
}

/// What one host traced of one migration, on that host's clock.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostTrace {
    /// The domain's QEMU on this host (0: never found).
    pub pid: u32,
    /// Its binary and the tap its guest packets crossed, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// When the process was first seen and traced (this host's clock): events before
    /// it are not in the trace.
    #[serde(default)]
    pub attached_ns: u64,
    pub trace: Trace,
    /// Why something could not be traced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl HostTrace {
    /// Applies `f` to every stamp of this host's clock: the attach time and the trace's
    /// (see [`Trace::map_stamps`]).
    pub fn map_stamps(&mut self, f: impl Fn(u64) -> u64) {
        if self.attached_ns != 0 {
            self.attached_ns = f(self.attached_ns);
        }
        self.trace.map_stamps(f);
    }
}

/// The guest MAC as the tap's: libvirt gives a domain's tap the guest's MAC with the
/// first byte set to 0xfe (`52:54:00:…` → `fe:54:00:…`).
pub fn tap_mac(guest_mac: &str) -> Option<String> {
    let bytes: Vec<&str> = guest_mac.split(':').collect();
    (bytes.len() == 6 && bytes.iter().all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok()))
        .then(|| format!("fe:{}", bytes[1..].join(":")).to_ascii_lowercase())
}

/// Inode of a network namespace: ours (None) or a named one.
fn netns_inode(ns: Option<&str>) -> Option<u64> {
    let path = ns.map_or_else(|| PathBuf::from("/proc/self/ns/net"), netns::ns_path);
    fs::metadata(path).ok().map(|m| m.ino())
}

/// The QEMU process running (or receiving) `domain` in network namespace `ns`, newest
/// first if several match.
pub fn find_domain_qemu(domain: &str, ns: Option<&str>) -> Option<u32> {
    let want = netns_inode(ns)?;
    let guest = format!("guest={domain},");
    let guest_end = format!("guest={domain}");
    let mut found: Vec<(u64, u32)> = fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_qemu = args.first().is_some_and(|a| String::from_utf8_lossy(a).contains("qemu-system"));
            let named = args.windows(2).any(|w| {
                w[0] == b"-name" && {
                    let v = String::from_utf8_lossy(w[1]);
                    v.starts_with(&guest) || v == guest_end || v == domain
                }
            });
            let inode = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
            let started = fs::metadata(format!("/proc/{pid}")).ok()?.ctime() as u64;
            (is_qemu && named && inode == want).then_some((started, pid))
        })
        .collect();
    found.sort();
    found.last().map(|(_, pid)| *pid)
}

/// The interface in namespace `ns` whose MAC is `mac` (as `ip -o link` shows it).
pub fn find_interface_by_mac(mac: &str, ns: Option<&str>) -> Option<String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(["-o", "link", "show"]).output().ok()?;
    parse_link_for_mac(&String::from_utf8_lossy(&out.stdout), mac)
}

fn parse_link_for_mac(ip_link: &str, mac: &str) -> Option<String> {
    let mac = mac.to_ascii_lowercase();
    ip_link.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let name = words.nth(1)?.trim_end_matches(':').split('@').next()?.to_owned();
        let mut rest = line.split_whitespace().skip_while(|w| *w != "link/ether");
        (rest.nth(1)?.to_ascii_lowercase() == mac).then_some(name)
    })
}

/// Traces one domain on one host.
pub struct HostTracer {
    tracer: Tracer,
    domain: String,
    tap_mac: Option<String>,
    /// Network namespace the host lives in (None: ours, as in an agent).
    netns: Option<String>,
    role: Option<Role>,
    pid: Option<u32>,
    binary: Option<PathBuf>,
    tap: Option<String>,
    attached_ns: u64,
    problems: Vec<String>,
}

impl HostTracer {
    /// Loads and attaches the host-wide probes (KVM tracepoints) and starts collecting.
    /// Must be called within a tokio runtime, as root.
    pub fn start(domain: &str, guest_mac: Option<&str>, netns: Option<String>) -> Result<Self, TraceError> {
        Ok(Self {
            tracer: Tracer::start(&[], &[])?,
            domain: domain.to_owned(),
            tap_mac: guest_mac.and_then(tap_mac),
            netns,
            role: None,
            pid: None,
            binary: None,
            tap: None,
            attached_ns: 0,
            problems: Vec::new(),
        })
    }

    /// Starts tracing a migration in `role`. A source must be running the domain now; a
    /// destination's QEMU is looked for by [`HostTracer::poll`].
    pub async fn begin(&mut self, role: Role) -> Result<Option<u32>, TraceError> {
        for pid in self.tracer.watched() {
            self.tracer.unwatch(pid)?;
        }
        (self.role, self.pid, self.binary, self.tap, self.attached_ns) = (Some(role), None, None, None, 0);
        self.problems.clear();
        self.tracer.begin(0, 0).await?;
        self.poll()?;
        if role == Role::Source && self.pid.is_none() {
            self.problems.push(format!("no QEMU process runs domain {} on this host", self.domain));
        }
        Ok(self.pid)
    }

    /// Looks for the domain's QEMU and tap once more and attaches to what is new.
    pub fn poll(&mut self) -> Result<(), TraceError> {
        if self.role.is_none() {
            return Ok(());
        }
        if self.pid.is_none()
            && let Some(pid) = find_domain_qemu(&self.domain, self.netns.as_deref())
        {
            let missing = self.tracer.watch(pid)?;
            if !missing.is_empty() {
                self.problems.push(format!("QEMU {pid} lacks {}", missing.join(", ")));
            }
            self.binary = fs::read_link(format!("/proc/{pid}/exe")).ok();
            self.attached_ns = crate::clock::monotonic_ns();
            self.pid = Some(pid);
        }
        if self.tap.is_none()
            && let Some(mac) = &self.tap_mac
            && let Some(tap) = find_interface_by_mac(mac, self.netns.as_deref())
        {
            match self.tracer.attach_tap(self.netns.as_deref(), &tap) {
                Ok(()) => self.tap = Some(tap),
                // The tap of a QEMU that is just starting may not be up yet: next poll.
                Err(e) => tracing_note(&mut self.problems, format!("tap {tap}: {e}")),
            }
        }
        Ok(())
    }

    /// Whether this host saw a reply of probe sender `ident` to a request sent at or
    /// after `since_ns` (this host's clock).
    pub async fn answered_since(&self, ident: u16, since_ns: u64) -> bool {
        self.tracer.answered_since(ident, since_ns).await
    }

    /// Ends the migration: what this host traced.
    pub async fn finish(&mut self) -> Result<HostTrace, TraceError> {
        let _ = self.poll();
        let pid = self.pid.unwrap_or(0);
        let (source, destination) = match self.role {
            Some(Role::Source) => (pid, 0),
            _ => (0, pid),
        };
        let trace = self.tracer.finish(source, destination).await?;
        if self.pid.is_none() {
            self.problems.push(format!("the domain's QEMU never appeared on this host ({:?})", self.role));
        }
        if self.tap_mac.is_some() && self.tap.is_none() {
            self.problems.push("the domain's tap never appeared on this host: no packet stamps".into());
        }
        self.role = None;
        Ok(HostTrace {
            pid,
            binary: self.binary.as_ref().map(|b| b.display().to_string()),
            tap: self.tap.clone(),
            attached_ns: self.attached_ns,
            trace,
            problems: std::mem::take(&mut self.problems),
        })
    }

    /// Stops collecting and detaches everything.
    pub async fn stop(self) -> Result<(), TraceError> {
        self.tracer.stop().await.map(|_| ())
    }
}

fn tracing_note(problems: &mut Vec<String>, note: String) {
    if !problems.contains(&note) {
        problems.push(note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_mac_maps_to_libvirts_tap_mac() {
        assert_eq!(tap_mac("52:54:00:78:00:0A").as_deref(), Some("fe:54:00:78:00:0a"));
        assert_eq!(tap_mac("52:54:00:78:00"), None);
        assert_eq!(tap_mac("zz:54:00:78:00:0a"), None);
    }

    #[test]
    fn finds_the_interface_with_a_mac_in_ip_link_output() {
        // `ip -o link show` (iproute2 6.1) in a libvirt host's namespace.
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n\
            5: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 9a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff\n\
            9: vnet3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br0 state UNKNOWN mode DEFAULT group default qlen 1000\\    link/ether fe:54:00:78:00:0a brd ff:ff:ff:ff:ff:ff\n\
            11: veth-a@if10: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br0 state UP\\    link/ether 3e:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff link-netns migtrace-b\n";
        assert_eq!(parse_link_for_mac(out, "FE:54:00:78:00:0A").as_deref(), Some("vnet3"));
        assert_eq!(parse_link_for_mac(out, "3e:00:00:00:00:01").as_deref(), Some("veth-a"));
        assert_eq!(parse_link_for_mac(out, "fe:54:00:78:00:0b"), None);
    }

    #[test]
    fn every_host_clock_stamp_converts_and_never_stays_never() {
        use crate::probe::tracer::{PacketStamp, PhaseStamp, VcpuStamp};
        let mut t = HostTrace { attached_ns: 100, ..HostTrace::default() };
        t.trace.phases.push(PhaseStamp {
            ts_ns: 1_000,
            tgid: 1,
            tid: 1,
            point: "VmStart".into(),
            ret: false,
            args: [7; 3],
            returned: None,
            round: Some(9),
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
        let vcpu = |first, last, exit| VcpuStamp {
            tid: 2,
            first_enter_ns: first,
            last_enter_ns: last,
            last_exit_ns: exit,
            enters: 2,
        };
        t.trace.link = Some(crate::probe::tracer::LinkTrace { bytes: 5, last_data_ns: 50 });
        t.trace.source_vcpus.push(vcpu(10, 20, 30));
        t.trace.destination_vcpus.push(vcpu(3_000, 4_000, 0));
        t.map_stamps(|ns| ns * 2);
        assert_eq!((t.attached_ns, t.trace.phases[0].ts_ns, t.trace.packets[0].ts_ns), (200, 2_000, 4_000));
        assert_eq!((t.trace.phases[0].args, t.trace.phases[0].round), ([7; 3], Some(9)), "values are not stamps");
        assert_eq!(t.trace.packets[0].sent_ns, 1_500, "the sender's echoed stamp is not this host's");
        assert_eq!(t.trace.source_vcpus[0], vcpu(20, 40, 60));
        assert_eq!(t.trace.destination_vcpus[0], vcpu(6_000, 8_000, 0), "0 means never");
        assert_eq!(t.trace.link, Some(crate::probe::tracer::LinkTrace { bytes: 5, last_data_ns: 100 }));
        let mut never = HostTrace::default();
        never.map_stamps(|ns| ns + 5);
        assert_eq!(never.attached_ns, 0, "never attached stays never");
    }

    #[test]
    fn finds_no_qemu_for_an_unknown_domain() {
        assert_eq!(find_domain_qemu("no-such-domain-here", None), None);
    }
}
