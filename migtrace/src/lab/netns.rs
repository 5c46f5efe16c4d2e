//! The lab's network: two hypervisor hosts, the switch between them and a third host
//! that reaches the guest, each a network namespace of its own, as separate as machines.
//!
//! ```text
//!   migtrace-<id>-a (host a)                              migtrace-<id>-b (host b)
//!   ┌─────────────────────────────────┐                   ┌─────────────────────────────────┐
//!   │ QEMU ─ tap-a ─ br0 ─ uplink ────┼──┐             ┌──┼──── uplink ─ br0 ─ tap-b ─ QEMU │
//!   │ mig0 10.79.0.1 ═════════════════╪══╪═════════════╪══╪═════════════════ mig0 10.79.0.2 │
//!   └─────────────────────────────────┘  │ the link    │  └─────────────────────────────────┘
//!                        migtrace-<id>-sw: sw0 ─ port-a, port-b, port-c  (the switch)
//!                                                         │
//!                        migtrace-<id>-c: client 10.77.0.1 (ping, probe sender, memory check)
//! ```
//!
//! The migration stream crosses the link, a veth pair between the hosts shaped to the
//! configured rate on both ends (roles alternate). The guest's traffic crosses each
//! host's bridge and the switch, unshaped: the probes and pings are a few hundred kbit/s,
//! and a queue in their path would add its own delay to every gap measured. After a
//! migration the destination's self-announce (RARP) moves the guest's MAC from one port
//! of the switch to the other, as it does between real hosts. Both labs (the QEMU lab
//! and the libvirt lab, whose daemons create their own taps) are built this way.

use std::net::Ipv4Addr;

pub use crate::sys::netns::NetError;
use crate::{
    hypervisor::link::LinkConfig,
    sys::{
        netns::{delete_ns, ifindex, ip},
        tc::{self, TcError},
    },
};

/// Prefix of every namespace migtrace creates; `lab clean` only touches these.
pub const NS_PREFIX: &str = "migtrace-";
/// The hosts' names, as their namespaces end.
pub const HOSTS: [&str; 2] = ["a", "b"];
/// Each host's bridge, its uplink to the switch, and its end of the link.
pub const BRIDGE: &str = "br0";
pub const UPLINK: &str = "uplink";
pub const LINK_IF: &str = "mig0";
/// The hosts' addresses on the link: where a destination listens.
pub const LINK_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 79, 0, 1), Ipv4Addr::new(10, 79, 0, 2)];
pub const LINK_PREFIX_LEN: u8 = 30;
/// The switch's bridge and its ports (to host a, host b, the client).
pub const SWITCH: &str = "sw0";
pub const SWITCH_PORTS: [&str; 3] = ["port-a", "port-b", "port-c"];
/// The QEMU lab's taps, one per host; source and destination alternate between them.
pub const TAPS: [&str; 2] = ["tap-a", "tap-b"];
/// The client's interface (the ping, the probe sender).
pub const CLIENT_IF: &str = "client";
/// The QEMU lab's client and guest.
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const PREFIX_LEN: u8 = 24;
/// Both QEMUs give the guest the same MAC, as in a real migration.
pub const GUEST_MAC: &str = "52:54:00:4d:54:01";

#[derive(Debug, thiserror::Error)]
pub enum LabNetError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("shaping the lab's link: {0}")]
    Shape(#[from] TcError),
    #[error(
        "the taps of hosts a and b got the same interface index ({0}) in their namespaces, and the tap classifier \
         tells taps apart by index; `migtrace lab clean` and try again"
    )]
    TapIndex(u32),
}

/// Who the lab's guest is on its network, and who reaches it.
#[derive(Clone, Copy, Debug)]
pub struct GuestNet {
    pub guest_ip: Ipv4Addr,
    pub guest_mac: &'static str,
    pub client_ip: Ipv4Addr,
    /// Make a tap per host for QEMU (the libvirt lab's daemons make their own).
    pub taps: bool,
}

impl GuestNet {
    /// The QEMU lab's.
    pub const QEMU_LAB: GuestNet =
        GuestNet { guest_ip: GUEST_IP, guest_mac: GUEST_MAC, client_ip: PROBE_IP, taps: true };
}

/// A lab's namespaces; deleted on drop (with them every interface and qdisc in them).
#[derive(Debug)]
pub struct LabNet {
    id: String,
    /// Namespaces made so far, in the order they were made.
    made: Vec<String>,
    /// The link as shaped.
    pub link: LinkConfig,
}

impl LabNet {
    /// The prefix of lab `id`'s namespaces (`migtrace-<id>`).
    pub fn ns_name(id: &str) -> String {
        format!("{NS_PREFIX}{id}")
    }

    /// Namespace of host `a` or `b`, of the switch (`sw`) or of the client (`c`).
    pub fn ns_of(id: &str, part: &str) -> String {
        format!("{}-{part}", Self::ns_name(id))
    }

    /// The namespaces a lab is made of, in the order they are made.
    pub fn all_namespaces(id: &str) -> [String; 4] {
        ["a", "b", "sw", "c"].map(|p| Self::ns_of(id, p))
    }

    /// Creates the namespaces and everything in them. Their names are known before
    /// (`all_namespaces`): a lab records them first, so that `lab clean` finds what a
    /// crash half-way left.
    pub fn create(id: &str, guest: GuestNet, link: &LinkConfig) -> Result<Self, LabNetError> {
        let mut net = Self { id: id.to_owned(), made: Vec::new(), link: link.clone() };
        for ns in Self::all_namespaces(id) {
            ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let [a, b, sw, c] = Self::all_namespaces(id);
        ip(&["-n", &sw, "link", "add", SWITCH, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        ip(&["-n", &sw, "link", "set", SWITCH, "up"])?;
        for (i, host) in [&a, &b].into_iter().enumerate() {
            if guest.taps {
                ip(&["-n", host, "tuntap", "add", "dev", TAPS[i], "mode", "tap"])?;
            }
            ip(&["-n", host, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
            ip(&["-n", host, "link", "add", UPLINK, "type", "veth", "peer", "name", SWITCH_PORTS[i], "netns", &sw])?;
            ip(&["-n", host, "link", "set", UPLINK, "master", BRIDGE, "up"])?;
            if guest.taps {
                ip(&["-n", host, "link", "set", TAPS[i], "master", BRIDGE, "up"])?;
            }
            ip(&["-n", host, "link", "set", BRIDGE, "up"])?;
            ip(&["-n", &sw, "link", "set", SWITCH_PORTS[i], "master", SWITCH, "up"])?;
        }
        if guest.taps {
            net.distinct_tap_indexes()?;
        }
        // The link: one veth pair between the hosts, an address on each end.
        ip(&["-n", &a, "link", "add", LINK_IF, "type", "veth", "peer", "name", LINK_IF, "netns", &b])?;
        for (i, host) in [&a, &b].into_iter().enumerate() {
            ip(&["-n", host, "addr", "add", &format!("{}/{LINK_PREFIX_LEN}", LINK_IPS[i]), "dev", LINK_IF])?;
            ip(&["-n", host, "link", "set", LINK_IF, "up"])?;
        }
        let mut shaper = String::new();
        for host in [&a, &b] {
            shaper = tc::shape(host, LINK_IF, link.rate.bits_per_second(), link.delay_ms)?;
        }
        if !shaper.is_empty() {
            net.link.shaper = format!("{shaper} on both ends of the hosts' veth pair (egress)");
        }
        // The client: a third host behind the switch.
        ip(&["-n", &c, "link", "add", CLIENT_IF, "type", "veth", "peer", "name", SWITCH_PORTS[2], "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", SWITCH_PORTS[2], "master", SWITCH, "up"])?;
        ip(&["-n", &c, "addr", "add", &format!("{}/{PREFIX_LEN}", guest.client_ip), "dev", CLIENT_IF])?;
        ip(&["-n", &c, "link", "set", CLIENT_IF, "up"])?;
        // The guest's address never changes hosts' view: a static neighbour entry keeps
        // ARP out of the probe path (the guest still announces itself after migration).
        let guest_ip = guest.guest_ip.to_string();
        ip(&[
            "-n",
            &c,
            "neigh",
            "replace",
            &guest_ip,
            "lladdr",
            guest.guest_mac,
            "dev",
            CLIENT_IF,
            "nud",
            "permanent",
        ])?;
        Ok(net)
    }

    /// The tap classifier's events name their interface by index only, and each
    /// namespace numbers its own: make the two taps' indexes differ (a tap made again
    /// takes the namespace's next index).
    fn distinct_tap_indexes(&self) -> Result<(), LabNetError> {
        let [a, b, ..] = Self::all_namespaces(&self.id);
        let index_a = ifindex(Some(&a), TAPS[0])?;
        for _ in 0..3 {
            if ifindex(Some(&b), TAPS[1])? != index_a {
                return Ok(());
            }
            ip(&["-n", &b, "link", "del", TAPS[1]])?;
            ip(&["-n", &b, "tuntap", "add", "dev", TAPS[1], "mode", "tap"])?;
            ip(&["-n", &b, "link", "set", TAPS[1], "master", BRIDGE, "up"])?;
        }
        Err(LabNetError::TapIndex(index_a))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Namespace of host `i` (0: a, 1: b).
    pub fn host_ns(&self, i: usize) -> String {
        Self::ns_of(&self.id, HOSTS[i])
    }

    /// Namespace of the client (the ping, the probe sender).
    pub fn client_ns(&self) -> String {
        Self::ns_of(&self.id, "c")
    }

    /// Namespace of the switch.
    pub fn switch_ns(&self) -> String {
        Self::ns_of(&self.id, "sw")
    }

    /// Deletes the namespaces now (idempotent).
    pub fn delete(&mut self) -> Result<(), NetError> {
        let mut first_error = None;
        for ns in self.made.drain(..).rev() {
            if let Err(e) = delete_ns(&ns) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for LabNet {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!("warning: {e}");
        }
    }
}

/// Names of migtrace's namespaces on this host.
pub fn list_lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.starts_with(NS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// The switch port through which lab `id`'s switch last learned `mac` (its forwarding
/// table: where it sends frames for that MAC), e.g. `port-b`.
pub fn switch_port_of(id: &str, mac: &str) -> Option<String> {
    let sw = LabNet::ns_of(id, "sw");
    let out =
        std::process::Command::new("bridge").args(["-n", &sw, "-j", "fdb", "show", "br", SWITCH]).output().ok()?;
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    entries
        .iter()
        .find(|e| e["mac"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(mac)) && e["ifname"] != SWITCH)
        .and_then(|e| e["ifname"].as_str().map(str::to_owned))
}

/// Namespaces of lab `id` that exist (any left behind after it went down).
pub fn namespaces_of(id: &str) -> Vec<String> {
    let prefix = format!("{}-", LabNet::ns_name(id));
    list_lab_namespaces().into_iter().filter(|n| n.starts_with(&prefix)).collect()
}

/// Bytes sent by interface `dev` in namespace `ns` so far (its own counter).
pub fn tx_bytes(ns: &str, dev: &str) -> Option<u64> {
    let out =
        std::process::Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", "dev", dev]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["stats64"]["tx"]["bytes"].as_u64()
}
