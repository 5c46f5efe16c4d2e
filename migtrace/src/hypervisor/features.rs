//! What a QEMU release can do for a migration, by the QMP names of its parameters and
//! capabilities: a knob the build lacks is refused before anything starts, with the
//! release it needs.

use std::fmt;

/// A migration parameter or capability and the QEMU release that added it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// QMP's name.
    pub name: &'static str,
    /// (major, minor) of the first release with it.
    pub since: (u32, u32),
}

/// `avail-switchover-bandwidth`: the bandwidth QEMU assumes for the switchover when it
/// decides whether the rest fits in `downtime-limit` (instead of its own estimate).
pub const AVAIL_SWITCHOVER_BANDWIDTH: Feature = Feature { name: "avail-switchover-bandwidth", since: (8, 2) };

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FeatureError {
    pub feature: Feature,
    /// The release at hand, None if unknown.
    pub version: Option<(u32, u32)>,
}

impl fmt::Display for FeatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = self.feature.since;
        write!(f, "{} needs QEMU {major}.{minor} or newer", self.feature.name)?;
        match self.version {
            Some((a, b)) => write!(f, "; this QEMU is {a}.{b} (in the lab: --qemu 10.0, or a `qemu` factor)"),
            None => write!(f, "; this QEMU's version is unknown"),
        }
    }
}

/// Whether QEMU `version` has `feature`.
pub fn require(feature: Feature, version: Option<(u32, u32)>) -> Result<(), FeatureError> {
    match version {
        Some(v) if v >= feature.since => Ok(()),
        _ => Err(FeatureError { feature, version }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_too_old_is_named_with_the_one_needed() {
        assert!(require(AVAIL_SWITCHOVER_BANDWIDTH, Some((8, 2))).is_ok());
        assert!(require(AVAIL_SWITCHOVER_BANDWIDTH, Some((10, 0))).is_ok());
        let e = require(AVAIL_SWITCHOVER_BANDWIDTH, Some((7, 2))).expect_err("7.2").to_string();
        assert_eq!(
            e,
            "avail-switchover-bandwidth needs QEMU 8.2 or newer; this QEMU is 7.2 (in the lab: --qemu 10.0, or a `qemu` factor)"
        );
        assert!(require(AVAIL_SWITCHOVER_BANDWIDTH, None).is_err());
    }
}
