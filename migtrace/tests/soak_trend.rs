//! The soak's leak check (`benches/soak.rs`): growth by the trend over many samples.

#[path = "../benches/soak/trend.rs"]
mod trend;

use trend::Trend;

/// 50 samples of open fds that move by up to ±8 with what is in flight, around `base`
/// plus `leak` per migration.
fn fds(base: f64, leak: f64) -> Vec<(f64, f64)> {
    let wobble = [0.0, 7.0, -3.0, 8.0, -8.0, 2.0, -6.0, 5.0, -1.0, 4.0];
    (10..60).map(|m| (m as f64, base + leak * m as f64 + wobble[m % 10])).collect()
}

#[test]
fn noise_between_two_samples_is_not_a_leak() {
    // As SOAK_MIGRATIONS=60 failed: 146 after migration 10, 153 after the last, with
    // nothing leaked: endpoints differ by 7, the trend is flat.
    let samples = fds(150.0, 0.0);
    let (first, last) = (samples[0].1, samples[samples.len() - 1].1);
    assert!(last > first, "the endpoints alone would call it growth: {first} → {last}");
    let t = Trend::fit(&samples).expect("trend");
    assert!(!t.grows(0.25), "{t:?}");
}

#[test]
fn a_descriptor_a_migration_is_a_leak() {
    let t = Trend::fit(&fds(150.0, 1.0)).expect("trend");
    assert!((t.slope - 1.0).abs() < 0.15 && t.grows(0.25), "{t:?}");
    // Half a descriptor a migration, still far above the noise's slope.
    assert!(Trend::fit(&fds(150.0, 0.5)).expect("trend").grows(0.25));
}

#[test]
fn too_few_samples_judge_nothing() {
    assert_eq!(Trend::fit(&[(1.0, 2.0), (2.0, 3.0)]), None);
    assert_eq!(Trend::fit(&[(5.0, 2.0), (5.0, 3.0), (5.0, 9.0)]), None);
}
