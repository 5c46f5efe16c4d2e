//! Root: the tap classifier in the kernel, fed crafted frames through a veth of a
//! namespace of our own. It stamps a well-formed probe reply and nothing that only
//! looks like one (wrong IP version, short header, fragments, a VLAN tag), and the
//! odd layout surfaces in migtrace's log through aya-log. Run with `cargo xtask test`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use migtrace::{
    hypervisor::link::LinkConfig,
    lab::netns::{CLIENT_IF, GuestNet, LabNet, SWITCH_PORTS},
    probe::{Collector, Event, Probes},
    sys::netns,
};
use migtrace_common::event::{Diag, PacketKind};
use tokio::sync::mpsc;

/// Every log record, as text: the test's stand-in for migtrace's stderr log.
struct Capture(Arc<Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

const IDENT: u16 = 0x4242;

/// Ethernet (broadcast, untagged unless `vlan`) + IPv4 header starting with `ver_ihl`
/// and with flags/fragment offset `frag` + ICMP echo reply `IDENT`/`seq` carrying
/// `stamp`.
fn frame(ver_ihl: u8, frag: u16, vlan: bool, seq: u16, stamp: u64) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0x00, 0x4d, 0x54, 0x99]);
    if vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]); // 802.1Q, VLAN 7
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = ver_ihl;
    ip[2..4].copy_from_slice(&36u16.to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = 1; // ICMP
    ip[12..16].copy_from_slice(&[10, 77, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 77, 0, 1]);
    f.extend_from_slice(&ip);
    let mut icmp = migtrace::measure::prober::echo_request(IDENT, seq, stamp);
    icmp[0] = 0; // echo reply
    f.extend_from_slice(&icmp);
    f
}

/// Sends `frames` out of interface `name` of namespace `ns` (a raw AF_PACKET socket).
fn send(ns: &str, name: &str, frames: &[Vec<u8>]) {
    let index = netns::ifindex(Some(ns), name).expect("ifindex");
    netns::with_ns(ns, || {
        // SAFETY: plain socket creation; closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        for f in frames {
            // SAFETY: an all-zero sockaddr_ll is valid; the fields we need are set.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&f[..6]);
            // SAFETY: f and addr are valid for the call.
            let n = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(n, f.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
        // SAFETY: closing the socket we opened.
        unsafe { libc::close(fd) };
    })
    .expect("enter namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: loads eBPF programs, creates a namespace (run `cargo xtask test`)"]
async fn classifier_stamps_probe_replies_only_and_logs_odd_layouts() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    log::set_boxed_logger(Box::new(Capture(logs.clone()))).expect("logger");
    // Before loading: the programs' log level is fixed at load.
    log::set_max_level(log::LevelFilter::Debug);

    let id = format!("cls{}", std::process::id() % 100_000);
    let net = LabNet::create(&id, GuestNet::QEMU_LAB, &LinkConfig::unlimited()).expect("namespaces");
    let mut probes = Probes::load().expect("load eBPF object");
    // Ingress of the switch's port to the client is what the client's veth sends.
    let attached = probes.attach_taps(Some(&net.switch_ns()), &[SWITCH_PORTS[2]]).expect("attach classifier");
    let (tx, mut rx) = mpsc::channel(64);
    let collector = Collector::spawn(probes.take_events().expect("ring buffer"), tx).expect("collector");

    let good = frame(0x45, 0, false, 1, 0x1122_3344_5566_7788);
    let odd = [
        frame(0x65, 0, false, 2, 2),      // IPv6 version nibble behind the IPv4 ethertype
        frame(0x44, 0, false, 3, 3),      // IHL 4: shorter than an IPv4 header
        frame(0x45, 0x2000, false, 4, 4), // first fragment, more to come
        frame(0x45, 0x000c, false, 5, 5), // a later fragment: no ICMP header at all
        frame(0x45, 0, true, 6, 6),       // VLAN-tagged
    ];
    let mut frames = vec![good.clone()];
    frames.extend(odd.iter().cloned());
    frames.push(frame(0x45, 0, false, 7, 7)); // a second good one, after the odd ones
    send(&net.client_ns(), CLIENT_IF, &frames);

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 {
        let Ok(Some(batch)) = tokio::time::timeout_at(deadline, rx.recv()).await else { break };
        for e in batch {
            if let Event::Packet(p) = e
                && p.kind == PacketKind::IcmpEchoReply as u32
                && p.ident == IDENT
            {
                seen.push(p);
            }
        }
    }
    // Whatever else arrives late would be a misclassified odd frame.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(batch) = rx.try_recv() {
        seen.extend(batch.into_iter().filter_map(|e| match e {
            Event::Packet(p) if p.kind == PacketKind::IcmpEchoReply as u32 && p.ident == IDENT => Some(p),
            _ => None,
        }));
    }
    collector.stop().await.expect("stop collector");
    let seqs: Vec<u16> = seen.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [1, 7], "only the well-formed replies are stamped");
    assert_eq!(seen[0].payload_stamp, 0x1122_3344_5566_7788);
    assert_eq!(seen[0].ifindex, attached[0].1);

    probes.flush_log();
    let logs = logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        logs.iter().any(|l| l.starts_with("DEBUG") && l.contains("IPv4 ethertype but version/IHL byte 65")),
        "eBPF diagnostic in the log: {logs:?}"
    );
    // Counted too, for the trace's health: the two frames whose IPv4 header is not one.
    let counts = probes.diagnostics().expect("diagnostics");
    assert_eq!(counts.by_diag[Diag::IpLayout as usize], 2);
    drop(probes);
    drop(net);
}
