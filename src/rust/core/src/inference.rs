//! Inference on Theta conditional on the fitted X and U: asymptotic
//! linearisation (sandwich and model-based covariances), the one-step Newton
//! update and the multiplier (wild) bootstrap built on it.
//!
//! Working model: `Y - X U = X Theta A + E`. With `theta = vec(Theta)` in
//! column-major order, unit n contributes the score
//! `s_n = -vec(X' r_n a_n') / sigma2` and the information is
//! `kron(A A', X'X - X'X M^{-1} X'X) / sigma2`, `M = X'X + lambda I`.

use std::sync::atomic::{AtomicBool, Ordering};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::dense::{column_chunks, wait_polling_interrupts, cross_product, outer_product_sum, product, Dense};
use crate::error::{check_shape, NmfreError, Result};
use crate::fit::Data;
use crate::linalg::Cholesky;

/// Ridge added to the information so that H exists when a block is flat.
pub const INFORMATION_RIDGE: f64 = 1e-8;

/// Denominator of the conditional residual variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sigma2Rule {
    /// RSS / max(PN - dfU - QK, 1): removes the random effects' and Theta's df.
    Corrected,
    /// RSS / (PN).
    Plain,
    /// RSS / max(PN - QK, 1).
    FixedOnly,
}

/// Form of the information matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InformationRule {
    /// X'X - X'X M^{-1} X'X: accounts for U having been fitted.
    Corrected,
    /// X'X alone.
    Plain,
}

/// Distribution of the multiplier weights; each has mean 0 and variance 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// Exp(1) - 1.
    Exponential,
    /// +1 or -1 with probability 1/2.
    Rademacher,
    /// Mammen's two-point distribution, which also matches the third moment 1.
    Mammen,
    /// Standard normal.
    Normal,
}

impl WeightKind {
    /// Draws one weight.
    pub fn draw(&self, rng: &mut ChaCha20Rng) -> f64 {
        match self {
            // 1 - U lies in (0, 1], so the logarithm is finite.
            WeightKind::Exponential => -(1.0 - rng.random::<f64>()).ln() - 1.0,
            WeightKind::Rademacher => {
                if rng.random::<bool>() {
                    1.0
                } else {
                    -1.0
                }
            }
            WeightKind::Mammen => {
                let root5 = 5f64.sqrt();
                let low_probability = (root5 + 1.0) / (2.0 * root5);
                if rng.random::<f64>() < low_probability {
                    -(root5 - 1.0) / 2.0
                } else {
                    (root5 + 1.0) / 2.0
                }
            }
            WeightKind::Normal => {
                // Box-Muller on (0, 1] x [0, 1).
                let radius = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt();
                let angle = 2.0 * std::f64::consts::PI * rng.random::<f64>();
                radius * angle.cos()
            }
        }
    }
}

/// Settings of the multiplier bootstrap.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub replicates: usize,
    pub weights: WeightKind,
    pub seed: u64,
    /// Project each replicate onto Theta >= 0.
    pub project: bool,
    /// Coverage of the percentile interval, in (0, 1).
    pub level: f64,
    pub threads: usize,
}

/// Settings of the inference step.
#[derive(Debug, Clone)]
pub struct InferenceOptions {
    pub sigma2_rule: Sigma2Rule,
    pub information: InformationRule,
    pub bootstrap: Option<BootstrapOptions>,
}

/// Bootstrap replicates and their summaries, one entry per element of vec(Theta).
#[derive(Debug, Clone)]
pub struct BootstrapResult {
    /// B x QK replicates, column-major.
    pub replicates: Dense,
    pub se: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

/// Covariances of vec(Theta) and the quantities behind them.
#[derive(Debug, Clone)]
pub struct Inference {
    pub rss: f64,
    /// tr(M^{-1} X'X).
    pub trace_hat: f64,
    pub dfu: f64,
    pub sigma2: f64,
    /// Information I (QK x QK).
    pub information: Dense,
    /// H = I^{-1}, also the model-based covariance.
    pub inverse_information: Dense,
    /// Sandwich covariance H J H.
    pub sandwich: Dense,
    /// Scores s_n as an N x QK matrix.
    pub scores: Dense,
    pub bootstrap: Option<BootstrapResult>,
}

/// The fitted quantities inference conditions on.
pub struct Conditioning<'a> {
    pub x: &'a Dense,
    pub theta: &'a Dense,
    pub u: &'a Dense,
    pub lambda: f64,
}

/// Computes the covariances of vec(Theta) and, when asked, the bootstrap.
///
/// `interrupted` is polled on the calling thread while the bootstrap runs;
/// when it returns true the replicates stop and the call returns
/// `NmfreError::Interrupted`.
pub fn infer(
    data: &Data<'_>,
    fitted: &Conditioning<'_>,
    options: &InferenceOptions,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<Inference> {
    let (p, n, k) = (data.p, data.n, data.k);
    let q = fitted.x.cols;
    check_shape("X", fitted.x.data.len(), p, q)?;
    check_shape("Theta", fitted.theta.data.len(), q, k)?;
    check_shape("U", fitted.u.data.len(), q, n)?;
    if !(fitted.lambda.is_finite() && fitted.lambda >= 0.0) {
        return Err(NmfreError::InvalidInput(format!("lambda must be finite and non-negative, not {}", fitted.lambda)));
    }
    if n < 2 {
        return Err(NmfreError::InvalidInput("inference needs at least 2 units".into()));
    }
    let qk = q * k;
    let a = data.a_dense();

    // Residuals of the working model and the per-unit projections X' r_n.
    let mut scores_fixed = Dense::zeros(q, n);
    product(fitted.theta, &a, &mut scores_fixed);
    for (s, u) in scores_fixed.data.iter_mut().zip(&fitted.u.data) {
        *s += u;
    }
    let mut projected = Dense::zeros(q, n);
    let mut rss = 0.0;
    let mut residual = vec![0.0; p];
    for j in 0..n {
        residual.copy_from_slice(&data.y[j * p..(j + 1) * p]);
        for qq in 0..q {
            let weight = scores_fixed.get(qq, j);
            for (r, xv) in residual.iter_mut().zip(fitted.x.col(qq)) {
                *r -= xv * weight;
            }
        }
        rss += residual.iter().map(|r| r * r).sum::<f64>();
        for qq in 0..q {
            let value = fitted.x.col(qq).iter().zip(&residual).map(|(xv, r)| xv * r).sum();
            projected.set(qq, j, value);
        }
    }

    // Hat trace and the conditional residual variance.
    let mut gram = Dense::zeros(q, q);
    cross_product(fitted.x, fitted.x, &mut gram);
    let mut ridge = gram.clone();
    for i in 0..q {
        ridge.data[i + q * i] += fitted.lambda;
    }
    let m_inverse = Cholesky::new(&ridge, "X'X + lambda I")?.inverse();
    let mut m_inv_gram = Dense::zeros(q, q);
    product(&m_inverse, &gram, &mut m_inv_gram);
    let trace_hat: f64 = (0..q).map(|i| m_inv_gram.get(i, i)).sum();
    let dfu = n as f64 * trace_hat;
    let cells = (p * n) as f64;
    let denominator = match options.sigma2_rule {
        Sigma2Rule::Corrected => (cells - dfu - qk as f64).max(1.0),
        Sigma2Rule::Plain => cells,
        Sigma2Rule::FixedOnly => (cells - qk as f64).max(1.0),
    };
    let sigma2 = rss / denominator;
    if !(sigma2.is_finite() && sigma2 > 0.0) {
        return Err(NmfreError::Numerical(format!(
            "the residual variance is {sigma2}; the model fits the data exactly, so no standard errors exist"
        )));
    }

    // Information: kron(A A', C) / sigma2 with C the (corrected) Gram matrix.
    let mut block = gram.clone();
    if options.information == InformationRule::Corrected {
        let mut correction = Dense::zeros(q, q);
        product(&gram, &m_inv_gram, &mut correction);
        for (b, c) in block.data.iter_mut().zip(&correction.data) {
            *b -= c;
        }
    }
    let mut aat = Dense::zeros(k, k);
    outer_product_sum(&a, &a, &mut aat);
    let mut information = Dense::zeros(qk, qk);
    for k1 in 0..k {
        for k2 in 0..k {
            for q1 in 0..q {
                for q2 in 0..q {
                    let value = aat.get(k1, k2) * block.get(q1, q2) / sigma2;
                    information.set(q1 + q * k1, q2 + q * k2, value);
                }
            }
        }
    }
    for i in 0..qk {
        information.data[i + qk * i] += INFORMATION_RIDGE;
    }
    let inverse_information = Cholesky::new(&information, "the information matrix")?.inverse();

    // Scores s_n = -vec(X' r_n a_n') / sigma2 and the meat J.
    let mut scores = Dense::zeros(n, qk);
    for j in 0..n {
        for kk in 0..k {
            let covariate = a.get(kk, j);
            for qq in 0..q {
                scores.set(j, qq + q * kk, -projected.get(qq, j) * covariate / sigma2);
            }
        }
    }
    let mut meat = Dense::zeros(qk, qk);
    cross_product(&scores, &scores, &mut meat);
    let correction = n as f64 / (n as f64 - 1.0);
    meat.data.iter_mut().for_each(|v| *v *= correction);
    let mut half = Dense::zeros(qk, qk);
    product(&inverse_information, &meat, &mut half);
    let mut sandwich = Dense::zeros(qk, qk);
    product(&half, &inverse_information, &mut sandwich);

    let bootstrap = match &options.bootstrap {
        Some(settings) => Some(bootstrap(fitted.theta, &inverse_information, &scores, settings, interrupted)?),
        None => None,
    };

    Ok(Inference { rss, trace_hat, dfu, sigma2, information, inverse_information, sandwich, scores, bootstrap })
}

/// Draws one-step Newton replicates `theta_b = theta - H sum_n w_nb s_n`.
///
/// Replicate b draws its N weights from ChaCha20 stream b of `seed`, so every
/// replicate is the same whatever the thread count. A replicate costs
/// O(N QK + (QK)^2) once the scores are known.
pub fn bootstrap(
    theta: &Dense,
    h: &Dense,
    scores: &Dense,
    settings: &BootstrapOptions,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<BootstrapResult> {
    let b_count = settings.replicates;
    if b_count < 2 {
        return Err(NmfreError::InvalidInput(format!("`B` must be at least 2, not {b_count}")));
    }
    if !(settings.level > 0.0 && settings.level < 1.0) {
        return Err(NmfreError::InvalidInput(format!("`level` must be in (0, 1), not {}", settings.level)));
    }
    let n = scores.rows;
    let qk = scores.cols;
    let estimate = &theta.data;

    // Work is split over threads (at least two, so that this thread is free
    // to poll for interrupts when the bootstrap is long) and each worker
    // checks `cancel` between replicates.
    let cancel = AtomicBool::new(false);
    let long_job = b_count.saturating_mul(n * qk + qk * qk) > 50_000_000;
    let threads = if long_job { settings.threads.max(2) } else { settings.threads.max(1) };
    let ranges = column_chunks(b_count, threads, n * qk + qk * qk);
    let draw_range = |range: std::ops::Range<usize>| -> Vec<f64> {
        let mut out = Vec::with_capacity(range.len() * qk);
        let mut weights = vec![0.0; n];
        let mut gradient = vec![0.0; qk];
        for replicate in range {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            let mut rng = ChaCha20Rng::seed_from_u64(settings.seed);
            rng.set_stream(replicate as u64);
            for w in weights.iter_mut() {
                *w = settings.weights.draw(&mut rng);
            }
            for (c, g) in gradient.iter_mut().enumerate() {
                *g = scores.col(c).iter().zip(&weights).map(|(s, w)| s * w).sum();
            }
            for i in 0..qk {
                let step: f64 = (0..qk).map(|j| h.get(i, j) * gradient[j]).sum();
                let mut value = estimate[i] - step;
                if settings.project {
                    value = value.max(0.0);
                }
                out.push(value);
            }
        }
        out
    };
    let chunks: Vec<Vec<f64>> = if ranges.len() <= 1 {
        ranges.into_iter().map(draw_range).collect()
    } else {
        std::thread::scope(|scope| {
            let draw_range = &draw_range;
            let handles: Vec<_> = ranges.into_iter().map(|range| scope.spawn(move || draw_range(range))).collect();
            wait_polling_interrupts(&handles, interrupted, &cancel);
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload)))
                .collect()
        })
    };
    if cancel.load(Ordering::Relaxed) {
        return Err(NmfreError::Interrupted);
    }

    // Chunks hold replicates row by row; store them as a B x QK matrix.
    let mut replicates = Dense::zeros(b_count, qk);
    for (b, row) in chunks.iter().flat_map(|chunk| chunk.chunks(qk)).enumerate() {
        for (c, &value) in row.iter().enumerate() {
            replicates.set(b, c, value);
        }
    }

    let alpha = (1.0 - settings.level) / 2.0;
    let mut se = Vec::with_capacity(qk);
    let mut lower = Vec::with_capacity(qk);
    let mut upper = Vec::with_capacity(qk);
    let mut sorted = vec![0.0; b_count];
    for c in 0..qk {
        let column = replicates.col(c);
        let mean = column.iter().sum::<f64>() / b_count as f64;
        let variance = column.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (b_count as f64 - 1.0);
        se.push(variance.sqrt());
        sorted.copy_from_slice(column);
        sorted.sort_by(f64::total_cmp);
        lower.push(quantile_type7(&sorted, alpha));
        upper.push(quantile_type7(&sorted, 1.0 - alpha));
    }
    Ok(BootstrapResult { replicates, se, lower, upper })
}

/// Sample quantile by linear interpolation between order statistics, the
/// default (type 7) of R's `quantile()`.
pub fn quantile_type7(sorted: &[f64], probability: f64) -> f64 {
    let count = sorted.len();
    if count == 0 {
        return f64::NAN;
    }
    let position = (count - 1) as f64 * probability;
    let below = position.floor() as usize;
    let above = (below + 1).min(count - 1);
    let fraction = position - below as f64;
    sorted[below] + fraction * (sorted[above] - sorted[below])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_r_type7() {
        // quantile(c(1, 2, 3, 4, 10), c(0.025, 0.5, 0.975)) in R 4.2.2: 1.1, 3, 9.4
        let sorted = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert!((quantile_type7(&sorted, 0.025) - 1.1).abs() < 1e-12);
        assert_eq!(quantile_type7(&sorted, 0.5), 3.0);
        assert!((quantile_type7(&sorted, 0.975) - 9.4).abs() < 1e-12);
    }

    #[test]
    fn weights_have_mean_zero_and_unit_variance() {
        for kind in [WeightKind::Exponential, WeightKind::Rademacher, WeightKind::Mammen, WeightKind::Normal] {
            let mut rng = ChaCha20Rng::seed_from_u64(7);
            let draws: Vec<f64> = (0..200_000).map(|_| kind.draw(&mut rng)).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let variance = draws.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / draws.len() as f64;
            // Standard error of the mean is 1 / sqrt(200000) = 0.0022.
            assert!(mean.abs() < 0.01, "{kind:?} mean {mean}");
            assert!((variance - 1.0).abs() < 0.03, "{kind:?} variance {variance}");
        }
    }

    #[test]
    fn bootstrap_stops_when_interrupted() {
        // 40000 replicates of 2000 scores make a long job, so the calling
        // thread polls `interrupted` while the workers draw.
        let scores = Dense::from_vec(2000, 1, (0..2000).map(|i| (i % 7) as f64 - 3.0).collect());
        let h = Dense::from_vec(1, 1, vec![1.0]);
        let theta = Dense::from_vec(1, 1, vec![1.0]);
        let settings = BootstrapOptions {
            replicates: 40_000,
            weights: WeightKind::Normal,
            seed: 1,
            project: false,
            level: 0.95,
            threads: 1,
        };
        let result = bootstrap(&theta, &h, &scores, &settings, &mut || true);
        assert_eq!(result.unwrap_err(), NmfreError::Interrupted);
    }

    #[test]
    fn bootstrap_is_identical_across_thread_counts() {
        let scores = Dense::from_vec(300, 2, (0..600).map(|i| ((i * 37) % 17) as f64 - 8.0).collect());
        let h = Dense::from_vec(2, 2, vec![0.5, 0.1, 0.1, 0.3]);
        let theta = Dense::from_vec(2, 1, vec![1.0, 2.0]);
        let settings = |threads| BootstrapOptions {
            replicates: 2_000,
            weights: WeightKind::Exponential,
            seed: 11,
            project: false,
            level: 0.95,
            threads,
        };
        let one = bootstrap(&theta, &h, &scores, &settings(1), &mut || false).unwrap();
        let four = bootstrap(&theta, &h, &scores, &settings(4), &mut || false).unwrap();
        assert_eq!(one.replicates, four.replicates);
    }
}
