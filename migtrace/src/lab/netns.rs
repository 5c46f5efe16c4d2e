//! The lab's private network: one network namespace per lab instance, with a bridge, one
//! tap per QEMU and a veth for the probe sender. Nothing routes out of it.
//!
//! ```text
//!   netns migtrace-<id>
//!   ┌──────────────────────────────────────────────────────┐
//!   │  probe (10.77.0.1) ── probe-br ─┐                    │
//!   │                                 br0 ── tap-a  (QEMU) │
//!   │                                     └─ tap-b  (QEMU) │
//!   └──────────────────────────────────────────────────────┘
//! ```
//! Interface names only need to be unique inside the namespace; the namespace name
//! carries the instance id, so labs never collide.

use std::net::Ipv4Addr;

pub use crate::sys::netns::NetError;
use crate::sys::netns::{delete_ns, ip};

/// Prefix of every namespace migtrace creates; `lab clean` only touches these.
pub const NS_PREFIX: &str = "migtrace-";
pub const BRIDGE: &str = "br0";
/// The two tap devices; source and destination alternate between them.
pub const TAPS: [&str; 2] = ["tap-a", "tap-b"];
/// The probe sender's interface and address.
pub const PROBE_IF: &str = "probe";
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const PREFIX_LEN: u8 = 24;
/// Both QEMUs give the guest the same MAC, as in a real migration.
pub const GUEST_MAC: &str = "52:54:00:4d:54:01";

/// A lab network namespace; deleted on drop (which also removes its bridge, taps, veth).
#[derive(Debug)]
pub struct LabNet {
    ns: String,
    deleted: bool,
}

impl LabNet {
    pub fn ns_name(id: &str) -> String {
        format!("{NS_PREFIX}{id}")
    }

    /// Creates the namespace and everything in it.
    pub fn create(id: &str) -> Result<Self, NetError> {
        let ns = Self::ns_name(id);
        ip(&["netns", "add", &ns])?;
        // From here on, Drop deletes the namespace if a later step fails.
        let net = Self { ns, deleted: false };
        let n = net.ns.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        for tap in TAPS {
            ip(&["-n", n, "tuntap", "add", "dev", tap, "mode", "tap"])?;
            ip(&["-n", n, "link", "set", tap, "master", BRIDGE, "up"])?;
        }
        ip(&["-n", n, "link", "add", PROBE_IF, "type", "veth", "peer", "name", "probe-br"])?;
        ip(&["-n", n, "link", "set", "probe-br", "master", BRIDGE, "up"])?;
        ip(&["-n", n, "addr", "add", &format!("{PROBE_IP}/{PREFIX_LEN}"), "dev", PROBE_IF])?;
        ip(&["-n", n, "link", "set", PROBE_IF, "up"])?;
        ip(&["-n", n, "link", "set", BRIDGE, "up"])?;
        // The guest's address never changes hosts' view: a static neighbour entry keeps
        // ARP out of the probe path (the guest still announces itself after migration).
        ip(&[
            "-n",
            n,
            "neigh",
            "replace",
            &GUEST_IP.to_string(),
            "lladdr",
            GUEST_MAC,
            "dev",
            PROBE_IF,
            "nud",
            "permanent",
        ])?;
        Ok(net)
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Deletes the namespace now (idempotent).
    pub fn delete(&mut self) -> Result<(), NetError> {
        if !self.deleted {
            self.deleted = true;
            delete_ns(&self.ns)?;
        }
        Ok(())
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
