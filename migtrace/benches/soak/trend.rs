//! Whether a footprint grows: judged by the trend over many samples, not by two
//! endpoints. migtrace's open file descriptors move by about 15 with what is in flight
//! when they are counted (a migration's sockets, the next QEMU's), so two samples can
//! differ by that much with nothing leaked; a least-squares line through every sample
//! after the warm-up cannot be moved that far by such noise.

use statrs::statistics::Statistics as _;

/// A least-squares line through (migration, value) samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    /// Change per migration.
    pub slope: f64,
    /// The slope's standard error (from the residuals).
    pub se: f64,
    pub samples: usize,
}

impl Trend {
    /// None below 3 samples, or when every sample is at one migration.
    pub fn fit(samples: &[(f64, f64)]) -> Option<Self> {
        if samples.len() < 3 {
            return None;
        }
        let x: Vec<f64> = samples.iter().map(|s| s.0).collect();
        let y: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let var = x.iter().variance();
        if var.is_nan() || var <= 0.0 {
            return None;
        }
        let slope = x.iter().covariance(y.iter()) / var;
        let (mx, my) = (x.iter().mean(), y.iter().mean());
        let rss: f64 = samples.iter().map(|(a, b)| (b - my - slope * (a - mx)).powi(2)).sum();
        let n = samples.len() as f64;
        let sxx = var * (n - 1.0);
        Some(Self { slope, se: (rss / (n - 2.0) / sxx).sqrt(), samples: samples.len() })
    }

    /// Growth: more than `per_migration` a migration, and more than three standard
    /// errors (not a slope the noise alone could draw).
    pub fn grows(&self, per_migration: f64) -> bool {
        self.slope > per_migration && self.slope > 3.0 * self.se
    }
}
