//! Guest packets at the lab's taps: a tc classifier on tap ingress (frames the guest
//! sends) stamps probe replies and the destination's self-announce with the tap, i.e.
//! the host, they came through.
//!
//! Only untagged IPv4, ARP and RARP frames are read. VLAN-tagged frames belong to no
//! probe of ours; IPv4 fragments other than a whole datagram carry no complete L4
//! header to trust.

use aya_ebpf::{macros::classifier, programs::TcContext};
use aya_log_ebpf::debug;
use migtrace_common::event::{
    Diag, EventKind, LINK_BYTES, LINK_DATA_MIN_LEN, LINK_LAST_NS, PacketEvent, PacketKind, UDP_PROBE_PORT,
};

use crate::maps::{LINK, atomic_add, emit, header, now_ns, raise};

const TC_ACT_OK: i32 = 0;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_RARP: u16 = 0x8035;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv4 flags and fragment offset: "more fragments" and the 13-bit offset.
const IP_MF_OFFSET: u16 = 0x3fff;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
const ICMP_ECHOREPLY: u8 = 0;

/// The lab's link, on ingress of each host's end: counts the data that crossed it (see
/// [`crate::maps::LINK`]), so that the bytes between two phase stamps and the stream's
/// last packet are the wire's, not what QEMU says it wrote. Ingress, not egress: the
/// shaper's queue sits on egress after any classifier there.
#[classifier]
pub fn link_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    if len >= LINK_DATA_MIN_LEN {
        if let Some(bytes) = LINK.get_ptr_mut(LINK_BYTES) {
            atomic_add(bytes, len as u64);
        }
        if let Some(last) = LINK.get_ptr_mut(LINK_LAST_NS) {
            // SAFETY: a u64 slot of a map that outlives the program; the last writer wins.
            unsafe { *last = now_ns() };
        }
    }
    TC_ACT_OK
}

#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    if let Some(event) = classify(&ctx) {
        emit(&ctx, EventKind::Packet, event);
    }
    // Observe only: every packet continues unchanged.
    TC_ACT_OK
}

#[inline(always)]
fn be16(ctx: &TcContext, offset: usize) -> Option<u16> {
    ctx.load::<u16>(offset).ok().map(u16::from_be)
}

#[inline(always)]
fn classify(ctx: &TcContext) -> Option<PacketEvent> {
    // SAFETY: the context's skb pointer is valid for the program's duration.
    let (ifindex, vlan_present) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).vlan_present) };
    // A tag the stack already moved out of the frame (hardware-accelerated VLAN).
    if vlan_present != 0 {
        return None;
    }
    let ethertype = be16(ctx, 12)?;
    let mut event =
        PacketEvent { header: header(EventKind::Packet), ifindex, len: ctx.len(), ..PacketEvent::default() };
    match ethertype {
        ETH_P_8021Q | ETH_P_8021AD => return None,
        ETH_P_IP => {
            let ver_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
            let ihl = (ver_ihl & 0x0f) as usize;
            if ver_ihl >> 4 != 4 || ihl < 5 {
                if raise(Diag::IpLayout) {
                    debug!(ctx, "tap {}: IPv4 ethertype but version/IHL byte {:x}: not parsed", ifindex, ver_ihl);
                }
                return None;
            }
            // Our probes are never fragmented; a fragment has no (complete) L4 header.
            if be16(ctx, ETH_HLEN + 6)? & IP_MF_OFFSET != 0 {
                return None;
            }
            let l4 = ETH_HLEN + ihl * 4;
            let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
            event.saddr = ctx.load(ETH_HLEN + 12).ok()?;
            event.daddr = ctx.load(ETH_HLEN + 16).ok()?;
            match proto {
                IPPROTO_ICMP => {
                    let icmp_type: u8 = ctx.load(l4).ok()?;
                    if icmp_type != ICMP_ECHOREPLY {
                        return None;
                    }
                    event.kind = PacketKind::IcmpEchoReply as u32;
                    event.ident = be16(ctx, l4 + 4)?;
                    event.seq = be16(ctx, l4 + 6)?;
                    event.payload_stamp = ctx.load::<u64>(l4 + 8).map(u64::from_be).unwrap_or(0);
                }
                IPPROTO_UDP => {
                    let sport = be16(ctx, l4)?;
                    if sport != UDP_PROBE_PORT {
                        return None;
                    }
                    event.kind = PacketKind::UdpProbeReply as u32;
                    event.ident = be16(ctx, l4 + 2)?;
                    event.seq = be16(ctx, l4 + 8)?;
                    event.payload_stamp = ctx.load::<u64>(l4 + 10).map(u64::from_be).unwrap_or(0);
                }
                _ => return None,
            }
        }
        ETH_P_ARP => {
            event.kind = PacketKind::Arp as u32;
            event.seq = be16(ctx, ETH_HLEN + 6)?; // ARP operation
            event.saddr = ctx.load(ETH_HLEN + 14).ok()?;
            event.daddr = ctx.load(ETH_HLEN + 24).ok()?;
        }
        ETH_P_RARP => {
            event.kind = PacketKind::Rarp as u32;
            event.seq = be16(ctx, ETH_HLEN + 6)?;
        }
        _ => return None,
    }
    Some(event)
}
