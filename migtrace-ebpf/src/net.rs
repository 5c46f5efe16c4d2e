//! Guest packets at the lab's taps: a tc classifier on tap ingress (frames the guest
//! sends) stamps probe replies and the destination's self-announce with the tap, i.e.
//! the host, they came through.

use aya_ebpf::{macros::classifier, programs::TcContext};
use migtrace_common::event::{EventKind, PacketEvent, PacketKind, UDP_PROBE_PORT};

use crate::maps::{emit, header};

const TC_ACT_OK: i32 = 0;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_RARP: u16 = 0x8035;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
const ICMP_ECHOREPLY: u8 = 0;

#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    if let Some(event) = classify(&ctx) {
        emit(EventKind::Packet, event);
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
    let ethertype = be16(ctx, 12)?;
    // SAFETY: the context's skb pointer is valid for the program's duration.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut event =
        PacketEvent { header: header(EventKind::Packet), ifindex, len: ctx.len(), ..PacketEvent::default() };
    match ethertype {
        ETH_P_IP => {
            let ver_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
            let l4 = ETH_HLEN + ((ver_ihl & 0x0f) as usize) * 4;
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
