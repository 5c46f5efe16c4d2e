//! The paper's reference: a real iputils `ping` at a 50 ms interval from inside the lab
//! namespace; downtime = lost replies × interval (plus the largest reply gap).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingReport {
    pub interval_ms: f64,
    /// Requests up to the last answered one (in-flight requests at the end are not lost).
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// Largest gap between consecutive replies, from ping's own `-D` stamps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PingReport {
    /// The paper's downtime: lost pings × interval.
    pub fn downtime_ms(&self) -> f64 {
        self.lost as f64 * self.interval_ms
    }
}

/// A running `ping`.
pub struct Ping {
    child: Option<Child>,
    interval: Duration,
    error: Option<String>,
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
        match cmd.spawn() {
            Ok(child) => Self { child: Some(child), interval, error: None },
            Err(e) => Self { child: None, interval, error: Some(format!("cannot run ping (iputils-ping): {e}")) },
        }
    }

    /// Interrupts ping (as Ctrl-C would) and parses what it printed.
    pub fn stop(mut self) -> PingReport {
        let interval_ms = self.interval.as_secs_f64() * 1e3;
        let Some(child) = self.child.take() else {
            return PingReport { interval_ms, error: self.error, ..PingReport::default() };
        };
        // SAFETY: signalling the ping process we started (ip netns exec execs ping).
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        match child.wait_with_output() {
            Ok(out) => {
                let mut report = parse(&String::from_utf8_lossy(&out.stdout), interval_ms);
                if report.sent == 0 {
                    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
                    report.error = Some(if stderr.is_empty() { "ping printed no replies".into() } else { stderr });
                }
                report
            }
            Err(e) => {
                PingReport { interval_ms, error: Some(format!("waiting for ping: {e}")), ..PingReport::default() }
            }
        }
    }
}

/// Parses `ping -D` output: `[1795604323.282513] 64 bytes from …: icmp_seq=5 ttl=64 time=0.4 ms`.
pub fn parse(output: &str, interval_ms: f64) -> PingReport {
    let mut replies: Vec<(u64, i64)> = output
        .lines()
        .filter_map(|line| {
            let stamp = unix_us(line.strip_prefix('[')?.split(']').next()?)?;
            let seq = line.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq="))?.parse::<u64>().ok()?;
            Some((seq, stamp))
        })
        .collect();
    replies.sort_by_key(|r| r.0);
    replies.dedup_by_key(|r| r.0);
    let Some(&(last_seq, _)) = replies.last() else {
        return PingReport { interval_ms, ..PingReport::default() };
    };
    let first_seq = replies[0].0.min(1);
    let sent = last_seq - first_seq + 1;
    let received = replies.len() as u64;
    let mut stamps: Vec<i64> = replies.iter().map(|r| r.1).collect();
    stamps.sort_unstable();
    let max_gap_ms = stamps.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e3).max_by(f64::total_cmp);
    PingReport { interval_ms, sent, received, lost: sent - received, max_gap_ms, error: None }
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
    fn lost_is_counted_up_to_the_last_reply_and_gap_from_stamps() {
        // iputils ping -D output (format of iputils 20221126), seq 4–6 lost.
        let out = "PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.\n\
            [1795604323.000000] 64 bytes from 10.77.0.2: icmp_seq=1 ttl=64 time=0.41 ms\n\
            [1795604323.050000] 64 bytes from 10.77.0.2: icmp_seq=2 ttl=64 time=0.40 ms\n\
            [1795604323.100000] 64 bytes from 10.77.0.2: icmp_seq=3 ttl=64 time=0.39 ms\n\
            [1795604323.251000] 64 bytes from 10.77.0.2: icmp_seq=7 ttl=64 time=0.52 ms\n\
            [1795604323.300000] 64 bytes from 10.77.0.2: icmp_seq=8 ttl=64 time=0.40 ms\n\
            \n--- 10.77.0.2 ping statistics ---\n9 packets transmitted, 5 received, 44% packet loss, time 400ms\n";
        let r = parse(out, 50.0);
        assert_eq!((r.sent, r.received, r.lost), (8, 5, 3));
        assert_eq!(r.downtime_ms(), 150.0);
        assert!((r.max_gap_ms.expect("gap") - 151.0).abs() < 1e-6);
    }

    #[test]
    fn no_replies_is_empty() {
        let r = parse("PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.\n", 50.0);
        assert_eq!((r.sent, r.lost), (0, 0));
        assert_eq!(r.max_gap_ms, None);
    }
}
