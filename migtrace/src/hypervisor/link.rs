//! The link that carries the migration stream between two hosts: its rate (and delay)
//! as configured, in tc's rate syntax, and what a migration achieved over it.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A link rate: bits per second, or no shaping at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkRate {
    /// No qdisc: the hosts' veth at memory speed (what the lab had before it had a link).
    Unlimited,
    BitsPerSecond(u64),
}

/// Accepted forms, for error messages.
pub const RATE_FORMS: &str = "a whole number with a unit in bits per second, as tc writes it: `100mbit`, `1gbit`, `2500kbit`, `10gbit`, or `unlimited`";

/// Units in bits per second, tc's decimal ones (`kbit` = 1000 bit/s) and its binary ones.
const UNITS: [(&str, u64); 9] = [
    ("bit", 1),
    ("kbit", 1_000),
    ("mbit", 1_000_000),
    ("gbit", 1_000_000_000),
    ("tbit", 1_000_000_000_000),
    ("kibit", 1 << 10),
    ("mibit", 1 << 20),
    ("gibit", 1 << 30),
    ("tibit", 1 << 40),
];

/// The slowest link the lab shapes: below it QEMU's setup and the guest's network
/// traffic, not the stream, would decide what is measured.
pub const MIN_BITS_PER_SECOND: u64 = 1_000_000;
/// The fastest: tc's tbf takes rates as 64-bit bytes per second, but no veth gets near.
pub const MAX_BITS_PER_SECOND: u64 = 1_000_000_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("link rate {given:?}: {why}; use {RATE_FORMS}")]
pub struct RateError {
    given: String,
    why: String,
}

impl FromStr for LinkRate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, RateError> {
        let err = |why: &str| RateError { given: s.to_owned(), why: why.to_owned() };
        let t = s.trim().to_ascii_lowercase();
        if t == "unlimited" {
            return Ok(LinkRate::Unlimited);
        }
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = t.split_at(digits);
        if number.is_empty() {
            return Err(err(if t.starts_with('-') { "a rate cannot be negative" } else { "no number" }));
        }
        if unit.is_empty() {
            return Err(err("no unit"));
        }
        if unit.ends_with("bps") {
            // tc reads `bps` as bytes per second; people mean bits: refuse the guess.
            return Err(err(
                "`bps` is bytes per second to tc and bits to most readers: write bits, e.g. 8gbit for 1gbps",
            ));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(err(&format!("unknown unit {unit:?}")));
        };
        let bits = number.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)).ok_or_else(|| err("too large"))?;
        if bits == 0 {
            return Err(err("a rate of 0 carries nothing (no shaping is `unlimited`)"));
        }
        if bits < MIN_BITS_PER_SECOND {
            return Err(err("below 1mbit"));
        }
        if bits > MAX_BITS_PER_SECOND {
            return Err(err("too large"));
        }
        Ok(LinkRate::BitsPerSecond(bits))
    }
}

impl LinkRate {
    pub fn bits_per_second(self) -> Option<u64> {
        match self {
            LinkRate::Unlimited => None,
            LinkRate::BitsPerSecond(b) => Some(b),
        }
    }

    pub fn bytes_per_second(self) -> Option<f64> {
        self.bits_per_second().map(|b| b as f64 / 8.0)
    }
}

impl fmt::Display for LinkRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self {
            LinkRate::Unlimited => return f.write_str("unlimited"),
            LinkRate::BitsPerSecond(b) => *b,
        };
        // The largest decimal unit that keeps the number whole: `1gbit`, `2500mbit`.
        let (unit, scale) = UNITS[..5].iter().rev().find(|(_, s)| bits % s == 0).copied().unwrap_or(("bit", 1));
        write!(f, "{}{unit}", bits / scale)
    }
}

impl Serialize for LinkRate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LinkRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The migration link as configured: shaped to `rate` in each direction, `delay_ms`
/// added in each direction (netem), and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkConfig {
    pub rate: LinkRate,
    /// One-way delay added in each direction, ms (needs the kernel's netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    /// How the rate and delay are imposed, e.g. `tbf rate 1gbit burst 500000 latency 50ms
    /// on both ends of a veth pair`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shaper: String,
}

impl LinkConfig {
    pub fn unlimited() -> Self {
        Self { rate: LinkRate::Unlimited, delay_ms: None, shaper: String::new() }
    }
}

/// The link as configured and what the migration achieved over it (`params.link`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// None: the link is not migtrace's to know (real hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured: Option<LinkConfig>,
    #[serde(default)]
    pub achieved: LinkAchieved,
}

/// Rates a migration achieved, bits per second. From the link's own counter where
/// the hosts count what crosses it (the labs: `from` = `link`), else from the
/// hypervisor's byte counts over the source's traced phases (`from` = `qemu`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkAchieved {
    /// `link`: bytes and times are the wire's (data packets arriving across the link).
    /// `qemu` (or `libvirt`): the hypervisor's `downtime-bytes` and `transferred` over
    /// the source's phases (libvirt's job statistics have no downtime bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// The stop-and-copy's rate. `link`: the data that crossed the link from the
    /// source's VM stop to the stream's last packet, over that span (what was still in
    /// flight at the stop crosses in it too: the guest waits for it as well). `qemu`:
    /// `downtime-bytes` over the source's stop → its last write of the VM's state
    /// returned (pre-copy left the socket buffer full, so these writes go at the link's
    /// pace, unless the buffer had drained: then this is too high).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_and_copy_bps: Option<f64>,
    /// The span behind `stop_and_copy_bps`, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_and_copy_ms: Option<f64>,
    /// The bytes behind `stop_and_copy_bps` (`link`: data bytes on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_and_copy_bytes: Option<u64>,
    /// What still crossed the link after the source's last write returned (its socket
    /// buffer and the link's queue): bytes (`link` only) and ms (`link`: to the last
    /// packet; `qemu`: to the destination's load complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<f64>,
    /// The whole migration's rate: `link`: data on the wire from setup to the last
    /// packet; `qemu`: `ram.transferred` over setup → source completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_bps: Option<f64>,
    /// Bytes the source's end of the link sent during the migration, by the
    /// interface's own counter (TCP/IP and Ethernet headers, ACKs the other way not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_tx_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_tc_syntax_and_print_back() {
        for (text, bits) in [
            ("100mbit", 100_000_000),
            ("1gbit", 1_000_000_000),
            ("10gbit", 10_000_000_000),
            ("2500kbit", 2_500_000),
            ("1Gbit", 1_000_000_000),
            ("1gibit", 1 << 30),
        ] {
            let r: LinkRate = text.parse().expect(text);
            assert_eq!(r.bits_per_second(), Some(bits), "{text}");
        }
        assert_eq!("unlimited".parse::<LinkRate>(), Ok(LinkRate::Unlimited));
        for (bits, text) in [(1_000_000_000, "1gbit"), (2_500_000_000, "2500mbit"), (100_000_000, "100mbit")] {
            assert_eq!(LinkRate::BitsPerSecond(bits).to_string(), text);
            assert_eq!(text.parse::<LinkRate>().map(|r| r.to_string()), Ok(text.to_owned()));
        }
        let json = serde_json::to_string(&LinkRate::BitsPerSecond(1_000_000_000)).expect("json");
        assert_eq!(json, "\"1gbit\"");
        assert_eq!(serde_json::from_str::<LinkRate>(&json).expect("back"), LinkRate::BitsPerSecond(1_000_000_000));
    }

    #[test]
    fn rates_are_parsed_strictly_with_one_line_errors_naming_the_forms() {
        for (text, why) in [
            ("1gbps", "bytes per second"),
            ("0", "no unit"),
            ("0mbit", "rate of 0"),
            ("-1mbit", "negative"),
            ("1e99bit", "unknown unit"),
            ("99999999999999999999gbit", "too large"),
            ("1.5gbit", "unknown unit"),
            ("gbit", "no number"),
            ("", "no number"),
            ("100kbit", "below 1mbit"),
        ] {
            let e = text.parse::<LinkRate>().expect_err(text).to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.contains("`1gbit`") && e.contains("`unlimited`") && !e.contains('\n'), "{text}: {e}");
        }
    }
}
