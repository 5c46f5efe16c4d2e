//! The paper's reference: a real iputils `ping` (50 ms interval by default) from inside
//! the lab namespace; downtime = lost replies × interval, plus the largest reply gap
//! around the switchover.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingReport {
    pub interval_ms: f64,
    /// Echo requests sent (ping's "packets transmitted").
    pub sent: u64,
    /// Replies (ping's "received": duplicates and ICMP errors not counted).
    pub received: u64,
    pub lost: u64,
    /// Largest gap between consecutive replies around the switchover, from ping's own
    /// `-D` stamps (see [`super::downtime::ping_gap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap_ms: Option<f64>,
    /// When that gap began: ms from the migration command to ping's stamp of the reply
    /// before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_start_ms: Option<f64>,
    /// How late ping itself was within that gap (ms): its requests or its printing
    /// lagged. Beyond one interval or 5 % of the gap, `downtime_ms.ping_max_gap` is
    /// `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every reply, in the order ping printed them.
    #[serde(skip)]
    pub replies: Vec<PingReply>,
}

/// One reply line of `ping -D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingReply {
    /// When ping received it, Unix µs (its `-D` stamp).
    pub unix_us: i64,
    pub seq: u16,
    /// Its round-trip time, µs: the request left `rtt_us` before `unix_us`.
    pub rtt_us: i64,
}

/// A real reply line: `[1795604323.282513] 64 bytes from 10.77.0.2: icmp_seq=5 ttl=64
/// time=0.412 ms`. Duplicates (`DUP!`) and ICMP errors (`From …: icmp_seq=5
/// Destination Host Unreachable`) are not replies.
pub fn reply_line(line: &str) -> Option<PingReply> {
    if !line.contains(" bytes from ") || line.contains("DUP!") {
        return None;
    }
    let unix_us = unix_us(line.strip_prefix('[')?.split(']').next()?)?;
    let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
    let seq = field("icmp_seq=")?.parse().ok()?;
    let rtt_ms: f64 = field("time=")?.parse().ok()?;
    Some(PingReply { unix_us, seq, rtt_us: (rtt_ms * 1e3).round() as i64 })
}

impl PingReport {
    /// The paper's downtime: lost pings × interval.
    pub fn downtime_ms(&self) -> f64 {
        self.lost as f64 * self.interval_ms
    }
}

/// A running `ping`, its output read as it comes.
pub struct Ping {
    child: Option<Child>,
    interval: Duration,
    error: Option<String>,
    replies: Option<mpsc::Receiver<()>>,
    /// ping's `-D` stamp (Unix µs) of the latest reply it printed; 0 before the first.
    last_reply_us: Arc<AtomicI64>,
    reader: Option<JoinHandle<String>>,
}

impl Ping {
    /// Starts `ping -D -n -i INTERVAL TARGET`, inside namespace `ns` if given.
    pub fn start(ns: Option<&str>, target: &str, interval: Duration) -> Self {
        let secs = format!("{:.3}", interval.as_secs_f64());
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ping"]);
                c
            }
            None => Command::new("ping"),
        };
        cmd.args(["-D", "-n", "-i", &secs, target]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Dies with us: a ping left running would keep the lab's namespace alive.
        let mut child = match crate::sys::tied::spawn_std(cmd) {
            Ok(child) => child,
            Err(e) => {
                return Self {
                    child: None,
                    interval,
                    error: Some(format!("cannot run ping (iputils-ping): {e}")),
                    replies: None,
                    last_reply_us: Arc::default(),
                    reader: None,
                };
            }
        };
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take();
        let last_reply_us = Arc::new(AtomicI64::new(0));
        let last = last_reply_us.clone();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let Some(stdout) = stdout else { return text };
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(reply) = reply_line(&line) {
                    last.fetch_max(reply.unix_us, Ordering::Relaxed);
                    let _ = tx.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        Self { child: Some(child), interval, error: None, replies: Some(rx), last_reply_us, reader: Some(reader) }
    }

    /// Whether ping has printed a reply stamped at or after `unix_us` (or cannot: a ping
    /// that did not start has nothing to wait for).
    pub fn replied_since(&self, unix_us: i64) -> bool {
        self.child.is_none() || self.last_reply_us.load(Ordering::Relaxed) >= unix_us
    }

    /// Interrupts ping (as Ctrl-C would) and parses what it printed. The interrupt goes
    /// right after a reply, so no request is in flight and the loss count is exact.
    pub fn stop(mut self) -> PingReport {
        let interval_ms = self.interval.as_secs_f64() * 1e3;
        let Some(mut child) = self.child.take() else {
            return PingReport { interval_ms, error: self.error, ..PingReport::default() };
        };
        if let Some(rx) = &self.replies {
            while rx.try_recv().is_ok() {}
            let _ = rx.recv_timeout(self.interval * 2);
        }
        let killed = match interrupt(&mut child) {
            Ok(killed) => killed,
            Err(e) => {
                return PingReport { interval_ms, error: Some(format!("waiting for ping: {e}")), ..Default::default() };
            }
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let stderr = stderr.trim().to_owned();
        let stdout = self.reader.take().and_then(|r| r.join().ok()).unwrap_or_default();
        let mut report = parse(&stdout, interval_ms);
        if killed {
            report.error = Some(format!("ping did not stop on {INTERRUPTS} interrupts and was killed: no summary"));
        } else if report.sent == 0 {
            report.error = Some(if stderr.is_empty() { "ping sent nothing".into() } else { stderr });
        }
        report
    }
}

/// Interrupts sent to ping before it is killed, one a second.
const INTERRUPTS: u32 = 5;

/// Interrupts `child` (ping) until it exits and returns whether it had to be killed.
/// iputils ping 20221126 here once ran on for minutes after an interrupt (the soak's 25th
/// of 40 migrations; a second one stopped it), which hung the whole run: the interrupt
/// is sent again each second, and the fifth second it is killed.
fn interrupt(child: &mut Child) -> std::io::Result<bool> {
    for _ in 0..INTERRUPTS {
        // SAFETY: signalling the ping process we started (ip netns exec execs ping).
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        for _ in 0..100 {
            if child.try_wait()?.is_some() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    child.kill()?;
    child.wait()?;
    Ok(true)
}

/// Parses `ping -D` output: reply lines (see [`reply_line`]) and the summary
/// `N packets transmitted, M received, …`. The gap is left to
/// [`super::downtime::ping_gap`], which knows the switchover.
pub fn parse(output: &str, interval_ms: f64) -> PingReport {
    let replies: Vec<PingReply> = output.lines().filter_map(reply_line).collect();
    let summary = output.lines().find(|l| l.contains("packets transmitted"));
    let number_before = |needle: &str| -> Option<u64> {
        let words: Vec<&str> =
            summary?.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).collect();
        let i = words.iter().position(|w| *w == needle)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let sent = number_before("packets").unwrap_or(0);
    let received = number_before("received").unwrap_or(replies.len() as u64);
    PingReport {
        interval_ms,
        sent,
        received,
        lost: sent.saturating_sub(received),
        max_gap_ms: None,
        gap_start_ms: None,
        late_ms: None,
        error: None,
        replies,
    }
}

/// `1795604323.282513` → Unix µs, without going through a lossy float.
fn unix_us(stamp: &str) -> Option<i64> {
    let (secs, frac) = stamp.split_once('.').unwrap_or((stamp, "0"));
    let frac = format!("{frac:0<6}");
    Some(secs.parse::<i64>().ok()? * 1_000_000 + frac.get(..6)?.parse::<i64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_the_summary_and_gap_from_stamps() {
        // iputils ping -D output (iputils 20221126), seq 4–6 lost.
        let out = "PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.\n\
            [1795604323.000000] 64 bytes from 10.77.0.2: icmp_seq=1 ttl=64 time=0.41 ms\n\
            [1795604323.050000] 64 bytes from 10.77.0.2: icmp_seq=2 ttl=64 time=0.40 ms\n\
            [1795604323.100000] 64 bytes from 10.77.0.2: icmp_seq=3 ttl=64 time=0.39 ms\n\
            [1795604323.251000] 64 bytes from 10.77.0.2: icmp_seq=7 ttl=64 time=0.52 ms\n\
            [1795604323.300000] 64 bytes from 10.77.0.2: icmp_seq=8 ttl=64 time=0.40 ms\n\
            \n--- 10.77.0.2 ping statistics ---\n8 packets transmitted, 5 received, 37.5% packet loss, time 350ms\n\
            rtt min/avg/max/mdev = 0.390/0.424/0.520/0.049 ms\n";
        let r = parse(out, 50.0);
        assert_eq!((r.sent, r.received, r.lost), (8, 5, 3));
        assert_eq!(r.downtime_ms(), 150.0);
        assert_eq!(r.replies.len(), 5);
        assert_eq!(r.replies[3], PingReply { unix_us: 1_795_604_323_251_000, seq: 7, rtt_us: 520 });
    }

    #[test]
    fn duplicates_and_errors_are_not_replies() {
        // iputils 20221126: a duplicate and an ICMP error carry icmp_seq= too.
        let out = "PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.\n\
            [1795604323.000000] 64 bytes from 10.77.0.2: icmp_seq=1 ttl=64 time=0.412 ms\n\
            [1795604323.000900] 64 bytes from 10.77.0.2: icmp_seq=1 ttl=64 time=1.31 ms (DUP!)\n\
            [1795604323.150000] From 10.77.0.1 icmp_seq=4 Destination Host Unreachable\n\
            [1795604323.200000] 64 bytes from 10.77.0.2: icmp_seq=5 ttl=64 time=112 ms\n\
            \n--- 10.77.0.2 ping statistics ---\n\
            5 packets transmitted, 2 received, +1 duplicates, +1 errors, 60% packet loss, time 200ms\n";
        let r = parse(out, 50.0);
        assert_eq!((r.sent, r.received, r.lost), (5, 2, 3));
        let seqs: Vec<u16> = r.replies.iter().map(|x| x.seq).collect();
        assert_eq!(seqs, [1, 5]);
        assert_eq!(r.replies[1].rtt_us, 112_000);
    }

    #[test]
    fn no_replies_is_all_lost() {
        let out = "PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.\n\n--- 10.77.0.2 ping statistics ---\n\
            4 packets transmitted, 0 received, 100% packet loss, time 150ms\n";
        let r = parse(out, 50.0);
        assert_eq!((r.sent, r.received, r.lost), (4, 0, 4));
        assert!(r.replies.is_empty());
    }
}
