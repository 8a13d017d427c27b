//! The statistics of a checkpoint comparison: Wilson intervals for an accuracy, the
//! exact McNemar test and a paired bootstrap interval for the difference of two
//! accuracies on the same items.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal};

/// z for a two-sided interval of `confidence` (0.95 → 1.96).
fn z(confidence: f64) -> f64 {
    Normal::standard().inverse_cdf(0.5 + confidence / 2.0)
}

/// Wilson score interval for `successes` of `n`.
pub fn wilson(successes: usize, n: usize, confidence: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let z = z(confidence);
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Two-sided exact McNemar p-value from the discordant pairs: `b` items only the
/// first model solves, `c` only the second. Under no difference, b ~ Bin(b + c, ½).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = (b + c) as u64;
    if n == 0 {
        return 1.0;
    }
    let binomial = Binomial::new(0.5, n).expect("p = 0.5 is valid");
    (2.0 * binomial.cdf(b.min(c) as u64)).min(1.0)
}

/// Percentile bootstrap interval of mean(second) − mean(first) over paired items.
pub fn paired_bootstrap(
    first: &[bool],
    second: &[bool],
    resamples: usize,
    confidence: f64,
    seed: u64,
) -> (f64, f64) {
    let n = first.len();
    if n == 0 || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let differences: Vec<f64> = first
        .iter()
        .zip(second)
        .map(|(&a, &b)| f64::from(u8::from(b)) - f64::from(u8::from(a)))
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            (0..n)
                .map(|_| differences[rng.random_range(0..n)])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    let at = |q: f64| means[((q * resamples as f64) as usize).min(resamples - 1)];
    (at(tail), at(1.0 - tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_a_worked_value() {
        // 40 of 100 at 95%: the textbook interval is (0.3094, 0.4980).
        let (low, high) = wilson(40, 100, 0.95);
        assert!(
            (low - 0.3094).abs() < 1e-4 && (high - 0.4980).abs() < 1e-4,
            "{low} {high}"
        );
        let (low, high) = wilson(0, 10, 0.95);
        assert!(low.abs() < 1e-12);
        assert!((high - 0.2775).abs() < 1e-4);
    }

    #[test]
    fn mcnemar_is_the_two_sided_binomial_tail() {
        // b = 2, c = 10: 2 · P(X ≤ 2 | n = 12) = 2 · 79/4096.
        assert!((mcnemar_exact(2, 10) - 2.0 * 79.0 / 4096.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert!(mcnemar_exact(0, 20) < 1e-5);
    }

    #[test]
    fn the_bootstrap_interval_brackets_the_difference() {
        let first: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
        let second: Vec<bool> = (0..200).map(|i| i % 4 != 3).collect();
        // Observed difference 0.75 - 0.5 = 0.25.
        let (low, high) = paired_bootstrap(&first, &second, 2000, 0.95, 0);
        assert!(
            low < 0.25 && 0.25 < high && low > 0.15 && high < 0.35,
            "{low} {high}"
        );
        assert_eq!(
            paired_bootstrap(&first, &second, 2000, 0.95, 0),
            (low, high)
        );
    }
}
