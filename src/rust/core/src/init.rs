//! NNDSVDar starting values for the basis X.
//!
//! Column 1 is `sqrt(d_1) |u_1|` from the leading singular pair of
//! `max(Y, 0)`. For q >= 2 the singular vectors are split into positive and
//! negative parts; the pair of parts with the larger product of norms is
//! kept and the u part is scaled by `sqrt(d_q) * ||v part||`, so that each
//! column approximates `d_q u_q v_q'` by a non-negative rank-one term. Zero
//! entries are replaced by `uniform(0, 1) * mean(Y) / 100` so that the
//! multiplicative updates can move them.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::dense::Dense;
use crate::error::{NmfreError, Result};

/// Leading `rank` singular triplets of a P x N matrix, from the smaller Gram matrix.
struct SingularTriplets {
    values: Vec<f64>,
    left: Dense,
    right: Dense,
}

/// Computes the leading singular triplets through the eigendecomposition of
/// the smaller of Y Y' and Y'Y. Squaring the condition number costs accuracy
/// only in the trailing triplets, which NNDSVD uses as a rough start, and it
/// keeps memory at min(P, N)^2 instead of a full SVD workspace.
fn leading_singular_triplets(y: MatRef<'_, f64>, rank: usize, par: Par) -> Result<SingularTriplets> {
    let (p, n) = (y.nrows(), y.ncols());
    let by_rows = p <= n;
    let size = if by_rows { p } else { n };
    let mut gram = Mat::<f64>::zeros(size, size);
    if by_rows {
        matmul(gram.as_mut(), Accum::Replace, y, y.transpose(), 1.0, par);
    } else {
        matmul(gram.as_mut(), Accum::Replace, y.transpose(), y, 1.0, par);
    }
    let eigen = gram
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| NmfreError::Numerical("eigendecomposition for the NNDSVD start did not converge".into()))?;
    let vectors = eigen.U();
    let eigenvalues = eigen.S().column_vector();

    let mut values = Vec::with_capacity(rank);
    let mut left = Dense::zeros(p, rank);
    let mut right = Dense::zeros(n, rank);
    for q in 0..rank {
        // Eigenvalues come in nondecreasing order; take them from the top.
        let index = size - 1 - q;
        let d = eigenvalues[index].max(0.0).sqrt();
        values.push(d);
        let vector = vectors.col(index);
        let (known, other, other_len) = if by_rows { (&mut left, &mut right, n) } else { (&mut right, &mut left, p) };
        for i in 0..size {
            known.set(i, q, vector[i]);
        }
        // The other singular vector is Y' u / d (or Y v / d); zero when d is.
        for j in 0..other_len {
            let mut sum = 0.0;
            for i in 0..size {
                let entry = if by_rows { y[(i, j)] } else { y[(j, i)] };
                sum += entry * vector[i];
            }
            other.set(j, q, if d > 0.0 { sum / d } else { 0.0 });
        }
    }
    Ok(SingularTriplets { values, left, right })
}

fn norm(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum::<f64>().sqrt()
}

/// Builds the P x rank NNDSVDar start for `y_positive = max(Y, 0)`.
pub fn nndsvdar(y_positive: MatRef<'_, f64>, rank: usize, seed: u64, par: Par) -> Result<Dense> {
    let (p, n) = (y_positive.nrows(), y_positive.ncols());
    let triplets = leading_singular_triplets(y_positive, rank, par)?;
    let mut x = Dense::zeros(p, rank);

    let scale = triplets.values[0].sqrt();
    for i in 0..p {
        x.set(i, 0, scale * triplets.left.get(i, 0).abs());
    }

    for q in 1..rank {
        let u = triplets.left.col(q);
        let v = triplets.right.col(q);
        let u_pos_norm = norm(u.iter().map(|&a| a.max(0.0)));
        let u_neg_norm = norm(u.iter().map(|&a| (-a).max(0.0)));
        let v_pos_norm = norm(v.iter().map(|&a| a.max(0.0)));
        let v_neg_norm = norm(v.iter().map(|&a| (-a).max(0.0)));
        let keep_positive = u_pos_norm * v_pos_norm >= u_neg_norm * v_neg_norm;
        let (sign, v_norm) = if keep_positive { (1.0, v_pos_norm) } else { (-1.0, v_neg_norm) };
        let scale = triplets.values[q].sqrt() * v_norm;
        for i in 0..p {
            x.set(i, q, scale * (sign * u[i]).max(0.0));
        }
    }

    // Zeros are fixed points of the multiplicative update; perturb them.
    let mut total = 0.0;
    for j in 0..n {
        for i in 0..p {
            total += y_positive[(i, j)];
        }
    }
    let mean = total / (p * n) as f64;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    for value in x.data.iter_mut() {
        if *value == 0.0 || !value.is_finite() {
            *value = rng.random::<f64>() * mean / 100.0;
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_one_start_is_scaled_leading_vector() {
        // Y = u v' with u = (1, 2), v = (1, 1, 1): d1 = sqrt(5) sqrt(3).
        let y = Dense::from_vec(2, 3, vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        let x = nndsvdar(y.as_ref(), 1, 1, Par::Seq).unwrap();
        let d1 = (15.0f64).sqrt();
        let u = [1.0 / 5f64.sqrt(), 2.0 / 5f64.sqrt()];
        for i in 0..2 {
            assert!((x.get(i, 0) - d1.sqrt() * u[i]).abs() < 1e-12);
        }
    }

    #[test]
    fn start_is_positive_and_seeded() {
        let data: Vec<f64> = (0..60).map(|i| ((i * 7919) % 13) as f64).collect();
        let y = Dense::from_vec(6, 10, data);
        let first = nndsvdar(y.as_ref(), 3, 42, Par::Seq).unwrap();
        let second = nndsvdar(y.as_ref(), 3, 42, Par::Seq).unwrap();
        assert_eq!(first, second);
        assert!(first.data.iter().all(|&v| v > 0.0));
        assert!(first.data.iter().all(|&v| v.is_finite()));
        let wide = Dense::from_vec(10, 6, (0..60).map(|i| ((i * 31) % 11) as f64).collect());
        let tall = nndsvdar(wide.as_ref(), 4, 1, Par::Seq).unwrap();
        assert!(tall.data.iter().all(|&v| v > 0.0));
        assert!(tall.data.iter().all(|&v| v.is_finite()));
    }
}
