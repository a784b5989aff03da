//! Draws data from the NMF-RE model `Y = X (Theta A + U) + E`.
//!
//! U (Q x N) and E (P x N) have i.i.d. entries of mean 0 and variances tau2
//! and sigma2, either Gaussian or centred exponential (`Exp(1) - 1`, scaled).
//! Y must be non-negative, so negative entries of X (Theta A + U) + E are set
//! to 0 and counted; U and E are returned as drawn.
//!
//! U comes from ChaCha20 stream 0 and E from stream 1 of the seed, both
//! filled in column-major order, so a seed gives the same data on every
//! platform and the draws of U do not depend on P.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::dense::{product, Dense};
use crate::error::{NmfreError, Result};
use crate::inference::WeightKind;

/// Distribution of the entries of U or E, before scaling to their variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Standard normal.
    Gaussian,
    /// `Exp(1) - 1`: mean 0, variance 1, skewness 2.
    CentredExponential,
}

impl Distribution {
    fn draw(&self, rng: &mut ChaCha20Rng) -> f64 {
        // The bootstrap's multiplier weights have exactly these laws.
        match self {
            Distribution::Gaussian => WeightKind::Normal.draw(rng),
            Distribution::CentredExponential => WeightKind::Exponential.draw(rng),
        }
    }
}

/// Settings of one simulated data set.
#[derive(Debug, Clone)]
pub struct SimulationOptions {
    pub sigma2: f64,
    pub tau2: f64,
    pub errors: Distribution,
    pub effects: Distribution,
    pub seed: u64,
}

/// One data set drawn from the model.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// P x N observations, non-negative.
    pub y: Dense,
    /// Q x N random effects as drawn.
    pub u: Dense,
    /// P x N errors as drawn.
    pub e: Dense,
    /// Number of entries of Y that were negative and set to 0.
    pub truncated: usize,
}

/// Draws Y, U and E for basis `x` (P x Q), effects `theta` (Q x K) and
/// covariates `a` (K x N).
pub fn simulate(x: &Dense, theta: &Dense, a: &Dense, options: &SimulationOptions) -> Result<Simulation> {
    let (p, q, k, n) = (x.rows, x.cols, a.rows, a.cols);
    if theta.rows != q || theta.cols != k {
        return Err(NmfreError::InvalidInput(format!(
            "`Theta` is {} x {} but must be {q} x {k} (rank of X by rows of A)",
            theta.rows, theta.cols
        )));
    }
    for (name, matrix) in [("X", x), ("Theta", theta), ("A", a)] {
        if matrix.data.iter().any(|v| !v.is_finite()) {
            return Err(NmfreError::InvalidInput(format!("`{name}` has a non-finite value")));
        }
    }
    for (name, value) in [("sigma2", options.sigma2), ("tau2", options.tau2)] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(NmfreError::InvalidInput(format!(
                "`{name}` must be a non-negative finite number, not {value}"
            )));
        }
    }

    let mut u = Dense::zeros(q, n);
    let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
    rng.set_stream(0);
    let scale = options.tau2.sqrt();
    for value in u.data.iter_mut() {
        *value = scale * options.effects.draw(&mut rng);
    }

    let mut e = Dense::zeros(p, n);
    let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
    rng.set_stream(1);
    let scale = options.sigma2.sqrt();
    for value in e.data.iter_mut() {
        *value = scale * options.errors.draw(&mut rng);
    }

    let mut scores = Dense::zeros(q, n);
    product(theta, a, &mut scores);
    for (s, effect) in scores.data.iter_mut().zip(&u.data) {
        *s += effect;
    }
    let mut y = Dense::zeros(p, n);
    product(x, &scores, &mut y);
    let mut truncated = 0;
    for (value, error) in y.data.iter_mut().zip(&e.data) {
        *value += error;
        if *value < 0.0 {
            *value = 0.0;
            truncated += 1;
        }
    }
    Ok(Simulation { y, u, e, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn design(n: usize) -> (Dense, Dense, Dense) {
        let x = Dense::from_vec(3, 2, vec![0.6, 0.3, 0.1, 0.1, 0.3, 0.6]);
        let theta = Dense::from_vec(2, 2, vec![10.0, 8.0, 2.0, 0.0]);
        let a = Dense::from_vec(2, n, (0..n).flat_map(|j| [1.0, (j % 2) as f64]).collect());
        (x, theta, a)
    }

    fn options(errors: Distribution, seed: u64) -> SimulationOptions {
        SimulationOptions { sigma2: 2.0, tau2: 0.5, errors, effects: errors, seed }
    }

    fn mean_and_variance(values: &[f64]) -> (f64, f64) {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (values.len() as f64 - 1.0);
        (mean, variance)
    }

    #[test]
    fn data_satisfy_the_model_equation() {
        let (x, theta, a) = design(50);
        let sim = simulate(&x, &theta, &a, &options(Distribution::Gaussian, 3)).unwrap();
        assert_eq!(sim.truncated, 0);
        let mut scores = Dense::zeros(2, 50);
        product(&theta, &a, &mut scores);
        for (s, u) in scores.data.iter_mut().zip(&sim.u.data) {
            *s += u;
        }
        let mut mean = Dense::zeros(3, 50);
        product(&x, &scores, &mut mean);
        for ((y, m), e) in sim.y.data.iter().zip(&mean.data).zip(&sim.e.data) {
            assert!((y - (m + e)).abs() < 1e-12);
        }
    }

    #[test]
    fn moments_match_the_variances() {
        // Each check uses 20,000 draws, and its bound is five standard errors.
        // The standard error of a sample mean is sqrt(v / 20000). That of a
        // sample variance is about v sqrt(2 / 20000) for Gaussian draws and
        // v sqrt(8 / 20000) for centred exponential ones, whose kurtosis is 9.
        let (x, theta, a) = design(10_000);
        for distribution in [Distribution::Gaussian, Distribution::CentredExponential] {
            let extra_kurtosis = if distribution == Distribution::Gaussian { 2.0 } else { 8.0 };
            let sim = simulate(&x, &theta, &a, &options(distribution, 5)).unwrap();
            for (values, variance) in [(&sim.u.data[..], 0.5), (&sim.e.data[..20_000], 2.0)] {
                let (mean, sample_variance) = mean_and_variance(values);
                let count = values.len() as f64;
                assert!(mean.abs() < 5.0 * (variance / count).sqrt(), "{distribution:?} mean {mean}");
                let bound = 5.0 * variance * (extra_kurtosis / count).sqrt();
                assert!(
                    (sample_variance - variance).abs() < bound,
                    "{distribution:?} variance {sample_variance} vs {variance}"
                );
            }
        }
    }

    #[test]
    fn exponential_draws_are_skewed_and_bounded_below() {
        let (x, theta, a) = design(10_000);
        let sim = simulate(&x, &theta, &a, &options(Distribution::CentredExponential, 9)).unwrap();
        // Exp(1) - 1 scaled by sqrt(0.5) is at least -sqrt(0.5).
        assert!(sim.u.data.iter().all(|&v| v >= -(0.5f64).sqrt()));
        let (mean, variance) = mean_and_variance(&sim.u.data);
        let skewness = sim.u.data.iter().map(|v| ((v - mean) / variance.sqrt()).powi(3)).sum::<f64>() / 20_000.0;
        assert!((skewness - 2.0).abs() < 0.5, "skewness {skewness}");
    }

    #[test]
    fn seed_fixes_the_draws() {
        let (x, theta, a) = design(200);
        let first = simulate(&x, &theta, &a, &options(Distribution::Gaussian, 1)).unwrap();
        let second = simulate(&x, &theta, &a, &options(Distribution::Gaussian, 1)).unwrap();
        let other = simulate(&x, &theta, &a, &options(Distribution::Gaussian, 2)).unwrap();
        assert_eq!(first.y, second.y);
        assert_eq!(first.u, second.u);
        assert_ne!(first.y, other.y);
    }

    #[test]
    fn negative_values_are_truncated() {
        let (x, _, a) = design(200);
        let theta = Dense::from_vec(2, 2, vec![0.5, 0.5, 0.0, 0.0]);
        let sim = simulate(&x, &theta, &a, &options(Distribution::Gaussian, 1)).unwrap();
        // Means near 0.5 with noise SD above 1 leave many negative values.
        assert!(sim.truncated > 50);
        assert_eq!(sim.y.data.iter().filter(|&&v| v == 0.0).count(), sim.truncated);
        assert!(sim.y.data.iter().all(|&v| v >= 0.0));
    }

    #[test]
    fn mismatched_theta_is_rejected() {
        let (x, _, a) = design(10);
        let theta = Dense::from_vec(2, 3, vec![1.0; 6]);
        assert!(matches!(
            simulate(&x, &theta, &a, &options(Distribution::Gaussian, 1)),
            Err(NmfreError::InvalidInput(_))
        ));
    }
}
