//! The guest's own memory after a migration: the lab guest's agent checks its whole
//! working set on request (UDP, from the probe sender's namespace) and answers with what
//! it found, so lost dirty pages become a measured count instead of a silent crash.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use workloads::verify::{CHECK_PORT, CHECK_REQUEST, MemoryCheck};

use crate::sys::netns;

/// Asks the agent at `guest` for a check, from namespace `ns` (None: the current one),
/// retrying until `timeout`. Runs on a thread of its own (it may enter a namespace).
pub fn request(ns: Option<&str>, guest: Ipv4Addr, timeout: Duration) -> Result<MemoryCheck, String> {
    let ns = ns.map(str::to_owned);
    std::thread::spawn(move || ask(ns.as_deref(), guest, timeout))
        .join()
        .unwrap_or_else(|_| Err("the memory-check thread panicked".into()))
}

fn ask(ns: Option<&str>, guest: Ipv4Addr, timeout: Duration) -> Result<MemoryCheck, String> {
    if let Some(ns) = ns {
        netns::enter(ns).map_err(|e| e.to_string())?;
    }
    let socket = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| format!("UDP socket: {e}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(250))).map_err(|e| e.to_string())?;
    let nonce = format!("{:x}", crate::clock::monotonic_ns());
    let request = format!("{CHECK_REQUEST}{nonce}");
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    // Resend now and then: the request or its answer may meet a guest still settling.
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            socket.send_to(request.as_bytes(), (guest, CHECK_PORT)).map_err(|e| format!("sending to {guest}: {e}"))?;
            next_send = Instant::now() + Duration::from_secs(1);
        }
        let Ok((n, _)) = socket.recv_from(&mut buf) else { continue };
        let Ok(reply) = serde_json::from_slice::<serde_json::Value>(&buf[..n]) else { continue };
        if reply["nonce"].as_str() != Some(nonce.as_str()) {
            continue;
        }
        if let Some(e) = reply["error"].as_str() {
            return Err(format!("the guest agent could not check: {e}"));
        }
        return serde_json::from_value(reply["memory_check"].clone())
            .map_err(|e| format!("unexpected answer from the guest agent: {e}"));
    }
    Err(format!(
        "the guest agent at {guest}:{CHECK_PORT} did not answer within {:.0} s (guest hung, or not migtrace's guest image)",
        timeout.as_secs_f64()
    ))
}
