//! Guest packets at the lab's taps: the tc classifier on tap ingress.

use aya::programs::{SchedClassifier, TcAttachType, tc};

use super::{ProbeError, Probes};
use crate::sys::netns::{self, NetError};

#[derive(Debug, thiserror::Error)]
pub enum NetProbeError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("attaching the tc classifier to {tap}: {source}")]
    Attach {
        tap: String,
        #[source]
        source: aya::programs::ProgramError,
    },
}

impl Probes {
    /// Attaches `link_ingress` to `dev` (an end of the lab's link) in namespace `ns`:
    /// it counts what the other end sent, after the shaper.
    pub fn attach_link(&mut self, ns: &str, dev: &str) -> Result<(), NetProbeError> {
        let program: &mut SchedClassifier = self.program("link_ingress")?;
        netns::in_ns(Some(ns), || {
            let _ = tc::qdisc_add_clsact(dev);
            program.attach(dev, TcAttachType::Ingress)
        })?
        .map_err(|source| NetProbeError::Attach { tap: dev.to_owned(), source })?;
        Ok(())
    }

    /// The link counter: data bytes carried so far, and when its last data packet arrived.
    pub fn link_counter(&self) -> Result<(u64, u64), ProbeError> {
        use aya::maps::{Array, MapData};
        use migtrace_common::event::{LINK_BYTES, LINK_LAST_NS};
        let map = self.ebpf.map("LINK").ok_or(ProbeError::Missing { what: "map", name: "LINK" })?;
        let array: Array<&MapData, u64> =
            Array::try_from(map).map_err(|source| ProbeError::Map { name: "LINK", source })?;
        let get = |i| array.get(&i, 0).map_err(|source| ProbeError::Map { name: "LINK", source });
        Ok((get(LINK_BYTES)?, get(LINK_LAST_NS)?))
    }

    /// Attaches `tap_ingress` to each of `taps` inside namespace `ns` (None: the current
    /// one; ingress on a tap is what the guest sends). Returns (tap, ifindex) pairs.
    pub fn attach_taps(&mut self, ns: Option<&str>, taps: &[&str]) -> Result<Vec<(String, u32)>, NetProbeError> {
        let mut attached = Vec::new();
        for tap in taps {
            let index = netns::ifindex(ns, tap)?;
            let program: &mut SchedClassifier = self.program("tap_ingress")?;
            netns::in_ns(ns, || {
                // Needed for netlink attachment on kernels before 6.6; harmless with TCX.
                let _ = tc::qdisc_add_clsact(tap);
                program.attach(tap, TcAttachType::Ingress)
            })?
            .map_err(|source| NetProbeError::Attach { tap: (*tap).to_owned(), source })?;
            attached.push(((*tap).to_owned(), index));
        }
        Ok(attached)
    }
}
