//! Shaping an interface with the kernel's qdiscs through `tc` (iproute2): a token
//! bucket (tbf) for the rate, netem for a delay where the kernel has it.

use std::{io, process::Command};

/// Why an interface could not be shaped.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("cannot run `tc` (package iproute2): {0}")]
    Spawn(#[source] io::Error),
    #[error("`{command}` failed: {stderr}")]
    Tc { command: String, stderr: String },
    #[error(
        "a link delay needs the kernel's netem qdisc (sch_netem), which this kernel lacks (`{command}`: {stderr}); \
         run without a delay, or on a kernel with CONFIG_NET_SCH_NETEM"
    )]
    NoNetem { command: String, stderr: String },
}

/// How long a packet may wait in the token bucket before tbf drops it.
const TBF_LATENCY_MS: u32 = 50;

/// The bucket: a millisecond at the rate, at least two 64 KiB GSO packets (tbf splits
/// larger packets, and a smaller bucket than one packet stalls the queue).
fn burst_bytes(bits_per_second: u64) -> u64 {
    (bits_per_second / 8 / 1000).max(128 << 10)
}

/// What to run, in order, to shape `dev` in namespace `ns`: the rate with tbf, a delay
/// (ms) with netem as the root and tbf below it. Returns the commands' arguments and the
/// shaper's description for records.
pub fn plan(ns: &str, dev: &str, bits_per_second: Option<u64>, delay_ms: Option<f64>) -> (Vec<Vec<String>>, String) {
    let base = |rest: &[&str]| -> Vec<String> {
        ["-n", ns, "qdisc", "replace", "dev", dev].iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let mut commands = Vec::new();
    let mut described = Vec::new();
    let tbf_parent = match delay_ms {
        Some(ms) => {
            let delay = format!("{}us", (ms * 1000.0).round() as u64);
            commands.push(base(&["root", "handle", "1:", "netem", "delay", &delay]));
            described.push(format!("netem delay {delay}"));
            Some("1:1")
        }
        None => None,
    };
    if let Some(bits) = bits_per_second {
        let rate = format!("{bits}bit");
        let burst = burst_bytes(bits).to_string();
        let latency = format!("{TBF_LATENCY_MS}ms");
        let tbf = ["tbf", "rate", rate.as_str(), "burst", burst.as_str(), "latency", latency.as_str()];
        let mut args = match tbf_parent {
            Some(parent) => vec!["parent", parent, "handle", "10:"],
            None => vec!["root", "handle", "1:"],
        };
        args.extend(tbf);
        commands.push(base(&args));
        described.push(format!("tbf rate {rate} burst {burst} latency {latency}"));
    }
    (commands, described.join(", "))
}

/// Shapes `dev` in namespace `ns` (egress); nothing to do for neither rate nor delay.
/// Returns the shaper's description.
pub fn shape(ns: &str, dev: &str, bits_per_second: Option<u64>, delay_ms: Option<f64>) -> Result<String, TcError> {
    let (commands, described) = plan(ns, dev, bits_per_second, delay_ms);
    for args in commands {
        let out = Command::new("tc").args(&args).output().map_err(TcError::Spawn)?;
        if !out.status.success() {
            let command = format!("tc {}", args.join(" "));
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if args.iter().any(|a| a == "netem") {
                return Err(TcError::NoNetem { command, stderr });
            }
            return Err(TcError::Tc { command, stderr });
        }
    }
    Ok(described)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_a_tbf_and_a_delay_a_netem_above_it() {
        let (c, d) = plan("ns", "mig0", Some(1_000_000_000), None);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].join(" "),
            "-n ns qdisc replace dev mig0 root handle 1: tbf rate 1000000000bit burst 131072 latency 50ms"
        );
        assert_eq!(d, "tbf rate 1000000000bit burst 131072 latency 50ms");
        let (c, d) = plan("ns", "mig0", Some(10_000_000_000), Some(2.5));
        assert_eq!(c[0].join(" "), "-n ns qdisc replace dev mig0 root handle 1: netem delay 2500us");
        assert!(c[1].join(" ").contains("parent 1:1 handle 10: tbf rate 10000000000bit burst 1250000"), "{c:?}");
        assert!(d.starts_with("netem delay 2500us, tbf"), "{d}");
        assert!(plan("ns", "mig0", None, None).0.is_empty());
    }
}
