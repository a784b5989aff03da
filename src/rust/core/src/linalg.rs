//! Small symmetric solves on Q x Q or QK x QK matrices, built on faer's
//! Cholesky factorisation.

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
    pub fn new(matrix: &Dense, what: &str) -> Result<Self> {
        debug_assert_eq!(matrix.rows, matrix.cols);
        let llt = matrix.as_ref().llt(Side::Lower).map_err(|_| {
            NmfreError::Numerical(format!("{what} is not positive definite, so its Cholesky factorisation failed"))
        })?;
        Ok(Cholesky { factor: Dense::from_mat(llt.L()) })
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
        let mut identity = Dense::zeros(size, size);
        for i in 0..size {
            identity.set(i, i, 1.0);
        }
        self.solve_columns(&mut identity);
        // Symmetrise so that later quadratic forms see an exactly symmetric matrix.
        for i in 0..size {
            for j in 0..i {
                let mean = 0.5 * (identity.get(i, j) + identity.get(j, i));
                identity.set(i, j, mean);
                identity.set(j, i, mean);
            }
        }
        identity
    }
}

/// Eigenvalues of a symmetric matrix, in nondecreasing order.
pub fn symmetric_eigenvalues(matrix: &Dense) -> Result<Vec<f64>> {
    let mat = Mat::<f64>::from_fn(matrix.rows, matrix.cols, |i, j| matrix.get(i, j));
    matrix_eigenvalues(&mat)
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
    fn eigenvalues_sorted() {
        let m = Dense::from_vec(2, 2, vec![2.0, 1.0, 1.0, 2.0]);
        let values = symmetric_eigenvalues(&m).unwrap();
        assert!((values[0] - 1.0).abs() < 1e-14);
        assert!((values[1] - 3.0).abs() < 1e-14);
    }
}
