//! Non-negative least squares in Gram form, with a lower bound:
//! minimise `0.5 x' H x - c' x` subject to `x >= lower`, for a symmetric
//! positive definite H. Used by the polishing phase of the fit for Theta
//! (QK unknowns) and for each row of X (Q unknowns), where the sizes are
//! small enough for an exact active-set solve.

use crate::dense::Dense;
use crate::linalg::Cholesky;

/// Solves the bounded problem by the Lawson-Hanson active-set method after
/// the shift `x = lower + z`, `z >= 0`. `start` is a feasible warm start
/// that decides the first passive set; the result is exact up to rounding.
pub fn nnls_gram(h: &Dense, c: &[f64], lower: f64, start: &[f64]) -> Vec<f64> {
    let size = c.len();
    // c for the shifted problem: c - H * lower * 1.
    let shifted: Vec<f64> = (0..size).map(|i| c[i] - lower * (0..size).map(|j| h.get(i, j)).sum::<f64>()).collect();
    let scale = shifted.iter().map(|v| v.abs()).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let tolerance = 1e-12 * scale * size as f64;

    let mut z: Vec<f64> = start.iter().map(|&v| (v - lower).max(0.0)).collect();
    let mut passive: Vec<bool> = z.iter().map(|&v| v > 0.0).collect();
    // Make the warm start consistent: solve on its passive set first.
    if passive.iter().any(|&p| p) {
        z = constrained_solve(h, &shifted, &mut passive, z);
    }

    for _ in 0..(3 * size + 10) {
        let gradient: Vec<f64> = (0..size).map(|i| shifted[i] - (0..size).map(|j| h.get(i, j) * z[j]).sum::<f64>()).collect();
        let candidate = (0..size)
            .filter(|&i| !passive[i] && gradient[i] > tolerance)
            .max_by(|&a, &b| gradient[a].total_cmp(&gradient[b]));
        let Some(entering) = candidate else { break };
        passive[entering] = true;
        z = constrained_solve(h, &shifted, &mut passive, z);
    }
    z.iter().map(|v| v + lower).collect()
}

/// Inner loop of Lawson-Hanson: solve on the passive set, stepping back to
/// the boundary and dropping variables until the solution is feasible.
fn constrained_solve(h: &Dense, c: &[f64], passive: &mut [bool], mut z: Vec<f64>) -> Vec<f64> {
    let size = c.len();
    for _ in 0..(3 * size + 10) {
        let indices: Vec<usize> = (0..size).filter(|&i| passive[i]).collect();
        if indices.is_empty() {
            return vec![0.0; size];
        }
        let m = indices.len();
        let mut sub = Dense::zeros(m, m);
        for (a, &i) in indices.iter().enumerate() {
            for (b, &j) in indices.iter().enumerate() {
                sub.set(a, b, h.get(i, j));
            }
        }
        let mut rhs: Vec<f64> = indices.iter().map(|&i| c[i]).collect();
        match Cholesky::new(&sub, "the NNLS subproblem") {
            Ok(chol) => chol.solve_in_place(&mut rhs),
            Err(_) => return z,
        }
        let mut trial = vec![0.0; size];
        for (a, &i) in indices.iter().enumerate() {
            trial[i] = rhs[a];
        }
        if indices.iter().all(|&i| trial[i] > 0.0) {
            return trial;
        }
        // Step from z towards trial until the first passive variable hits 0.
        let mut step: f64 = 1.0;
        for &i in &indices {
            if trial[i] <= 0.0 {
                let denominator = z[i] - trial[i];
                if denominator > 0.0 {
                    step = step.min(z[i] / denominator);
                } else {
                    step = 0.0;
                }
            }
        }
        for i in 0..size {
            z[i] += step * (trial[i] - z[i]);
        }
        for &i in &indices {
            if z[i] <= 1e-15 * (1.0 + trial[i].abs()) || trial[i] <= 0.0 && step == 0.0 {
                z[i] = 0.0;
                passive[i] = false;
            }
        }
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kkt_holds(h: &Dense, c: &[f64], lower: f64, x: &[f64]) {
        let size = c.len();
        for i in 0..size {
            let gradient: f64 = (0..size).map(|j| h.get(i, j) * x[j]).sum::<f64>() - c[i];
            assert!(x[i] >= lower - 1e-12);
            if x[i] > lower + 1e-9 {
                assert!(gradient.abs() < 1e-9, "free variable {i} has gradient {gradient}");
            } else {
                assert!(gradient > -1e-9, "bound variable {i} has gradient {gradient}");
            }
        }
    }

    #[test]
    fn unconstrained_solution_when_interior() {
        let h = Dense::from_vec(2, 2, vec![2.0, 0.5, 0.5, 1.0]);
        let c = [3.0, 2.0];
        let x = nnls_gram(&h, &c, 0.0, &[0.0, 0.0]);
        // H x = c: x = (8/7, 10/7)
        assert!((x[0] - 8.0 / 7.0).abs() < 1e-12);
        assert!((x[1] - 10.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn bound_becomes_active() {
        let h = Dense::from_vec(2, 2, vec![1.0, 0.9, 0.9, 1.0]);
        let c = [1.0, -1.0];
        let x = nnls_gram(&h, &c, 1e-10, &[1.0, 1.0]);
        assert!((x[1] - 1e-10).abs() < 1e-15);
        kkt_holds(&h, &c, 1e-10, &x);
    }

    #[test]
    fn random_problems_meet_kkt() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        for size in 1..9 {
            let m = Dense::from_vec(size + 3, size, (0..(size + 3) * size).map(|_| next()).collect());
            let mut h = Dense::zeros(size, size);
            crate::dense::cross_product(&m, &m, &mut h);
            let c: Vec<f64> = (0..size).map(|_| next()).collect();
            let start: Vec<f64> = (0..size).map(|_| next().abs()).collect();
            let x = nnls_gram(&h, &c, 0.0, &start);
            kkt_holds(&h, &c, 0.0, &x);
        }
    }
}
