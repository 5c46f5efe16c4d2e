//! migtrace's own high-rate probe sender: ICMP echo requests at a fixed interval (1 kHz
//! by default, 10 kHz and more possible) from inside the lab namespace. The replies are
//! timed where they leave the guest, at the taps, by the tc classifier; the sender's own
//! socket only counts them.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{clock::monotonic_ns, sys::netns};

/// What the probe sender did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProberReport {
    pub interval_us: u64,
    pub ident: u16,
    pub sent: u64,
    /// Replies that reached the sender's socket.
    pub received: u64,
    /// Monotonic ns of the first and last request.
    pub first_sent_ns: u64,
    pub last_sent_ns: u64,
    /// Where the sender itself stalled: consecutive send attempts more than two
    /// intervals apart, as (stamp before, stamp after) — the stamps the requests carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holes: Vec<(u64, u64)>,
    /// The latest send stamp echoed by a reply that reached the sender's socket: proof
    /// the guest answered, independent of the classifier at the taps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answered_sent_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A running probe sender; [`Prober::stop`] ends it and returns its report.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ProberReport>,
    /// ICMP identifier of this sender's requests.
    pub ident: u16,
}

impl Prober {
    /// Starts sending to `target` every `interval`, from inside namespace `ns` (None: the
    /// current one). Errors surface in the report: a failed sender never fails the
    /// migration it was meant to observe.
    pub fn start(ns: Option<String>, target: Ipv4Addr, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // An identifier of our own, so other pings (iputils) are told apart.
        let ident = (std::process::id() as u16) ^ 0x4d54;
        let thread = std::thread::spawn(move || {
            let mut report =
                ProberReport { interval_us: interval.as_micros() as u64, ident, ..ProberReport::default() };
            if let Err(e) = run(ns.as_deref(), target, interval, ident, &flag, &mut report) {
                report.error = Some(e.to_string());
            }
            report
        });
        Self { stop, thread, ident }
    }

    pub fn stop(self) -> ProberReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| ProberReport { error: Some("probe thread panicked".into()), ..Default::default() })
    }
}

fn run(
    ns: Option<&str>,
    target: Ipv4Addr,
    interval: Duration,
    ident: u16,
    stop: &AtomicBool,
    report: &mut ProberReport,
) -> io::Result<()> {
    if let Some(ns) = ns {
        netns::enter(ns).map_err(io::Error::other)?;
    }
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP)
    };
    if fd < 0 {
        return Err(io::Error::new(
            io::Error::last_os_error().kind(),
            format!("raw ICMP socket: {}", io::Error::last_os_error()),
        ));
    }
    // SAFETY: fd was just returned by socket().
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(target).to_be() },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    let mut seq: u16 = 0;
    let mut buf = [0u8; 1500];
    let mut next = start;
    let hole_ns = 2 * interval.as_nanos() as u64;
    let mut last_attempt: Option<u64> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Tests inject a failing sender here (see tests/tracing.rs).
        fail::fail_point!("prober-send", |_| Err(io::Error::other("injected send failure")));
        let stamp = monotonic_ns();
        if let Some(prev) = last_attempt
            && stamp - prev > hole_ns
        {
            report.holes.push((prev, stamp));
        }
        last_attempt = Some(stamp);
        let packet = echo_request(ident, seq, stamp);
        // SAFETY: packet and addr are valid for the call.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A full socket buffer or an unreachable guest is what we measure, not an error.
            if !matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN | libc::EHOSTUNREACH)) {
                return Err(io::Error::new(e.kind(), format!("sending ICMP echo to {target}: {e}")));
            }
        } else {
            let now = monotonic_ns();
            if report.sent == 0 {
                report.first_sent_ns = now;
            }
            report.last_sent_ns = now;
            report.sent += 1;
        }
        seq = seq.wrapping_add(1);
        receive(&socket, ident, &mut buf, report);
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > interval * 100 {
            // Far behind (host overloaded): skip the backlog instead of bursting.
            next = now;
        }
    }
    // Replies still in flight.
    std::thread::sleep(OBSERVE_AFTER_LAST);
    receive(&socket, ident, &mut buf, report);
    Ok(())
}

/// How long the sender keeps listening after its last request: the end of what it
/// observes.
pub const OBSERVE_AFTER_LAST: Duration = Duration::from_millis(50);

/// Counts our echo replies waiting on the socket and notes the latest echoed stamp.
fn receive(socket: &OwnedFd, ident: u16, buf: &mut [u8], report: &mut ProberReport) {
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return;
        }
        if let Some(stamp) = echo_reply_stamp(&buf[..n as usize], ident) {
            report.received += 1;
            report.last_answered_sent_ns = report.last_answered_sent_ns.max(Some(stamp));
        }
    }
}

/// The echoed send stamp of one of our echo replies (an IPv4 packet as a raw socket
/// hands it over), or None for anything else.
fn echo_reply_stamp(packet: &[u8], ident: u16) -> Option<u64> {
    let ihl = ((packet.first()? & 0x0f) as usize) * 4;
    let icmp = packet.get(ihl..)?;
    if icmp.len() < 16 || icmp[0] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != ident {
        return None;
    }
    Some(u64::from_be_bytes(icmp[8..16].try_into().ok()?))
}

/// An ICMP echo request with the send stamp as payload.
pub fn echo_request(ident: u16, seq: u16, stamp_ns: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8; // echo request
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&stamp_ns.to_be_bytes());
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7, 0xdead_beef);
        assert_eq!(p[0], 8);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
        // A packet including its checksum sums to 0xffff, i.e. checksum() gives 0.
        assert_eq!(checksum(&p), 0);
        // RFC 1071 example.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn reads_the_echoed_stamp_of_our_replies_only() {
        let mut reply = vec![0x45u8; 20];
        let mut icmp = echo_request(0x1234, 9, 0x0102_0304_0506_0708);
        icmp[0] = 0; // echo reply
        reply.extend_from_slice(&icmp);
        assert_eq!(echo_reply_stamp(&reply, 0x1234), Some(0x0102_0304_0506_0708));
        assert_eq!(echo_reply_stamp(&reply, 0x4321), None, "another sender's reply");
        reply[20] = 8;
        assert_eq!(echo_reply_stamp(&reply, 0x1234), None, "a request, not a reply");
        assert_eq!(echo_reply_stamp(&reply[..30], 0x1234), None, "too short for a stamp");
    }
}
