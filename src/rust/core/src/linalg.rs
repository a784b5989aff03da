//! Small symmetric solves on Q x Q or QK x QK matrices by a plain Cholesky
//! factorisation, and eigenvalues of small symmetric matrices.

use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::{Mat, Par, Side};

use crate::dense::Dense;
use crate::error::{NmfreError, Result};

/// Lower Cholesky factor of a symmetric positive definite matrix.
pub struct Cholesky {
    factor: Dense,
}

impl Cholesky {
    /// Factorises `matrix`; `what` names it in the error when it is not positive definite.
    ///
    /// A plain row-by-row factorisation: the matrices here are Q x Q or
    /// QK x QK, where a blocked library routine spends more on dispatch and
    /// allocation than on arithmetic, and the fit factorises one per iteration.
    pub fn new(matrix: &Dense, what: &str) -> Result<Self> {
        debug_assert_eq!(matrix.rows, matrix.cols);
        let size = matrix.rows;
        let mut factor = Dense::zeros(size, size);
        for i in 0..size {
            for j in 0..=i {
                let mut value = matrix.get(i, j);
                for m in 0..j {
                    value -= factor.get(i, m) * factor.get(j, m);
                }
                if i == j {
                    if !(value > 0.0 && value.is_finite()) {
                        return Err(NmfreError::Numerical(format!(
                            "{what} is not positive definite, so its Cholesky factorisation failed"
                        )));
                    }
                    factor.set(i, i, value.sqrt());
                } else {
                    factor.set(i, j, value / factor.get(j, j));
                }
            }
        }
        Ok(Cholesky { factor })
    }

    pub fn dim(&self) -> usize {
        self.factor.rows
    }

    /// Overwrites `rhs` (length dim) with the solution of `matrix * x = rhs`.
    pub fn solve_in_place(&self, rhs: &mut [f64]) {
        let size = self.factor.rows;
        let l = &self.factor;
        for i in 0..size {
            let mut value = rhs[i];
            for j in 0..i {
                value -= l.get(i, j) * rhs[j];
            }
            rhs[i] = value / l.get(i, i);
        }
        for i in (0..size).rev() {
            let mut value = rhs[i];
            for j in i + 1..size {
                value -= l.get(j, i) * rhs[j];
            }
            rhs[i] = value / l.get(i, i);
        }
    }

    /// Solves for every column of `rhs` (dim x m), in place, by blocked
    /// triangular solves.
    pub fn solve_columns(&self, rhs: &mut Dense) {
        self.solve_columns_with(rhs, Par::Seq);
    }

    pub fn solve_columns_with(&self, rhs: &mut Dense, par: Par) {
        debug_assert_eq!(rhs.rows, self.factor.rows);
        let l = self.factor.as_ref();
        solve_lower_triangular_in_place(l, rhs.as_mut(), par);
        solve_upper_triangular_in_place(l.transpose(), rhs.as_mut(), par);
    }

    pub fn inverse(&self) -> Dense {
        let size = self.factor.rows;
        let mut out = Dense::zeros(size, size);
        self.inverse_into(&mut out);
        out
    }

    /// Sets `out` (dim x dim) to the inverse of the factorised matrix.
    pub fn inverse_into(&self, out: &mut Dense) {
        let size = self.factor.rows;
        debug_assert_eq!((out.rows, out.cols), (size, size));
        out.data.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..size {
            out.set(i, i, 1.0);
        }
        for column in out.data.chunks_exact_mut(size) {
            self.solve_in_place(column);
        }
        // Symmetrise so that later quadratic forms see an exactly symmetric matrix.
        for i in 0..size {
            for j in 0..i {
                let mean = 0.5 * (out.get(i, j) + out.get(j, i));
                out.set(i, j, mean);
                out.set(j, i, mean);
            }
        }
    }
}

/// Largest size for which [`symmetric_eigenvalues`] uses Jacobi rotations.
const JACOBI_MAX_SIZE: usize = 16;

/// Eigenvalues of a symmetric matrix, in nondecreasing order.
///
/// The fit needs the eigenvalues of X'X every iteration. Up to
/// `JACOBI_MAX_SIZE` rows, cyclic Jacobi rotations cost a small fraction of
/// a library eigensolver's set-up and are as accurate; faer does larger
/// matrices.
pub fn symmetric_eigenvalues(matrix: &Dense) -> Result<Vec<f64>> {
    if matrix.rows <= JACOBI_MAX_SIZE {
        if let Some(values) = jacobi_eigenvalues(matrix) {
            return Ok(values);
        }
    }
    let mat = Mat::<f64>::from_fn(matrix.rows, matrix.cols, |i, j| matrix.get(i, j));
    matrix_eigenvalues(&mat)
}

/// Eigenvalues by cyclic Jacobi rotations, sorted; None when 100 sweeps
/// do not bring the off-diagonal part below rounding level (or the input
/// is not finite).
fn jacobi_eigenvalues(matrix: &Dense) -> Option<Vec<f64>> {
    let n = matrix.rows;
    let mut a = matrix.data.clone();
    let total = a.iter().map(|v| v * v).sum::<f64>();
    if !total.is_finite() {
        return None;
    }
    for _ in 0..100 {
        let off: f64 = (0..n).flat_map(|j| (0..j).map(move |i| (i, j))).map(|(i, j)| a[i + n * j].powi(2)).sum();
        if off <= 1e-34 * total {
            let mut values: Vec<f64> = (0..n).map(|i| a[i + n * i]).collect();
            values.sort_by(f64::total_cmp);
            return Some(values);
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p + n * q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p, q], with |t| <= 1 for stability.
                let theta = (a[q + n * q] - a[p + n * p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k + n * p], a[k + n * q]);
                    a[k + n * p] = c * akp - s * akq;
                    a[k + n * q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p + n * k], a[q + n * k]);
                    a[p + n * k] = c * apk - s * aqk;
                    a[q + n * k] = s * apk + c * aqk;
                }
            }
        }
    }
    None
}

fn matrix_eigenvalues(mat: &Mat<f64>) -> Result<Vec<f64>> {
    mat.self_adjoint_eigenvalues(Side::Lower)
        .map_err(|_| NmfreError::Numerical("symmetric eigendecomposition did not converge".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_and_inverts() {
        let m = Dense::from_vec(2, 2, vec![4.0, 2.0, 2.0, 3.0]);
        let chol = Cholesky::new(&m, "M").unwrap();
        let mut rhs = vec![2.0, 1.0];
        chol.solve_in_place(&mut rhs);
        // 4x + 2y = 2, 2x + 3y = 1  ->  x = 0.5, y = 0
        assert!((rhs[0] - 0.5).abs() < 1e-15);
        assert!(rhs[1].abs() < 1e-15);
        let inv = chol.inverse();
        assert!((inv.get(0, 0) - 3.0 / 8.0).abs() < 1e-15);
        assert!((inv.get(0, 1) + 2.0 / 8.0).abs() < 1e-15);
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        let m = Dense::from_vec(2, 2, vec![1.0, 2.0, 2.0, 1.0]);
        assert!(Cholesky::new(&m, "M").is_err());
    }

    #[test]
    fn jacobi_matches_library_eigenvalues() {
        // A 5 x 5 Gram matrix; faer's solver is the reference.
        let columns: Vec<f64> = (0..35).map(|i| ((i * 7 + 3) % 11) as f64 / 5.0).collect();
        let x = Dense::from_vec(7, 5, columns);
        let mut gram = Dense::zeros(5, 5);
        crate::dense::cross_product(&x, &x, &mut gram);
        let mat = Mat::<f64>::from_fn(5, 5, |i, j| gram.get(i, j));
        let expected = matrix_eigenvalues(&mat).unwrap();
        let actual = jacobi_eigenvalues(&gram).unwrap();
        let largest = expected[4];
        for (a, e) in actual.iter().zip(&expected) {
            assert!((a - e).abs() <= 1e-13 * largest, "{a} vs {e}");
        }
    }

    #[test]
    fn eigenvalues_sorted() {
        let m = Dense::from_vec(2, 2, vec![2.0, 1.0, 1.0, 2.0]);
        let values = symmetric_eigenvalues(&m).unwrap();
        assert!((values[0] - 1.0).abs() < 1e-14);
        assert!((values[1] - 3.0).abs() < 1e-14);
    }
}
