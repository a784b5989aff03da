//! Buffers that the estimation loop reuses from one iteration to the next.

use faer::linalg::matmul::matmul;
use faer::{Accum, Par};

use super::Data;
use crate::columns::transposed;
use crate::dense::{outer_product_sum, Dense};

/// Buffers reused across iterations, so that an iteration allocates only
/// Q x Q and Q x K temporaries.
///
/// The N x Q matrices hold one basis per column (the transposes of the
/// model's Q x N matrices), so that the kernels of [`crate::columns`] run
/// along the units.
pub(super) struct Workspace {
    /// Y'X for the current X (N x Q).
    pub(super) ytx: Dense,
    /// Scores B' = max(A'Theta' + U', 0) in the X-step; A'Theta' + U' when
    /// the residual sum of squares needs a pass over Y (N x Q).
    pub(super) scores: Dense,
    /// A' (N x K).
    pub(super) a_t: Dense,
    /// Y A' (P x K), for X'(Y - X U) A' without a pass over Y.
    pub(super) ya: Dense,
    /// Upper bound on the entries of X u_n, unit by unit (N).
    pub(super) bound: Vec<f64>,
    /// Row means of Y (P) and of A (K), for the centring of U.
    pub(super) y_mean: Vec<f64>,
    pub(super) a_mean: Vec<f64>,
    pub(super) gram: Dense,
    pub(super) ybt: Dense,
    pub(super) bbt: Dense,
    pub(super) x_denominator: Dense,
    pub(super) aat: Dense,
    /// Theta' (K x Q).
    pub(super) theta_t: Dense,
    /// U A' (Q x K), U U' (Q x Q) and <X'Y, U> for the current U.
    pub(super) ua: Dense,
    pub(super) uu: Dense,
    pub(super) xty_u: f64,
    /// X'(Y A') (Q x K).
    pub(super) xya: Dense,
    /// -Theta' (M^-1 X'X)' (K x Q), the coefficients of A' in U'.
    pub(super) fixed_coefficients: Dense,
    /// X'(max(max(Y, 0) - X U, 0) - (Y - X U)) A' (Q x K).
    pub(super) correction: Dense,
    /// X'(Y - X U) A' plus `correction` (Q x K).
    pub(super) numerator: Dense,
    pub(super) theta_denominator: Dense,
    /// X' (Q x P) and the largest entry of each row of X, for the checks of
    /// the positive part.
    pub(super) x_rows: Dense,
    pub(super) row_max: Vec<f64>,
    /// One set per thread of [`project_data`](super::passes::project_data).
    pub(super) pass: Vec<PassBuffers>,
    /// The sum of their `by_row` copies (P x K).
    pub(super) by_row_sum: Dense,
    /// Y' (N x P), kept when Y is small (see `SMALL_DATA_CELLS`), and the
    /// buffers of [`project_data`](super::passes::project_data) on that path.
    pub(super) y_t: Option<Dense>,
    pub(super) pass_small: Option<PassBuffers>,
    pub(super) moments: Moments,
    /// Column sums of X that the last normalisation divided by (Q).
    pub(super) scales: Vec<f64>,
    pub(super) solve: RidgeSolve,
    /// P x Q and Q x Q temporaries of [`gram_route_product`](super::gram::gram_route_product).
    pub(super) route_buffers: [Dense; 3],
    pub(super) route_complement: Dense,
    /// Q x K and Q x Q temporaries of the Theta-step and the residual sum
    /// of squares.
    pub(super) gram_ua: Dense,
    pub(super) gram_theta: Dense,
    pub(super) scores_outer: Dense,
}

/// Buffers of [`unit_moments_from_gram`](super::gram::unit_moments_from_gram).
pub(super) struct Moments {
    /// Y Y' X (P x Q).
    pub(super) gx: Dense,
    /// Y Z = [Y Y' X, Y A', Y 1] (P x (Q + K + 1)).
    pub(super) yz: Dense,
    /// X' Y Z (Q x (Q + K + 1)).
    pub(super) xyz: Dense,
    /// Z'Z ((Q + K + 1) x (Q + K + 1)).
    pub(super) ztz: Dense,
    /// The U-step's coefficients C, with U' = Z C ((Q + K + 1) x Q).
    pub(super) c: Dense,
    pub(super) ztz_c: Dense,
    /// Y U' (P x Q).
    pub(super) yu: Dense,
}

impl Moments {
    pub(super) fn new(p: usize, q: usize, k: usize) -> Self {
        let m = q + k + 1;
        Moments {
            gx: Dense::zeros(p, q),
            yz: Dense::zeros(p, m),
            xyz: Dense::zeros(q, m),
            ztz: Dense::zeros(m, m),
            c: Dense::zeros(m, q),
            ztz_c: Dense::zeros(m, q),
            yu: Dense::zeros(p, q),
        }
    }
}

/// Largest Y (in cells) for which the loop keeps a copy of Y' and forms Y'X
/// from it: below this size a product's set-up costs more than the
/// arithmetic.
pub(super) const SMALL_DATA_CELLS: usize = 1 << 16;

/// Copies of the row sums in [`PassBuffers`]: consecutive units add to
/// different copies, so that additions to the same row do not wait on each
/// other.
pub(super) const BY_ROW_COPIES: usize = 4;

/// Buffers of one thread's share of [`project_data`](super::passes::project_data).
pub(super) struct PassBuffers {
    /// X'Y for a block of units (Q x block).
    pub(super) xty: Vec<f64>,
    /// This share's sums of delta_pn a_n' over its units (P x K), one for
    /// each of `BY_ROW_COPIES` residues of n, which X' turns into its part
    /// of `Workspace::correction`.
    pub(super) by_row: Dense,
    pub(super) u_column: Vec<f64>,
}

impl PassBuffers {
    pub(super) fn new(p: usize, q: usize, k: usize, block: usize) -> Self {
        PassBuffers { xty: vec![0.0; q * block], by_row: Dense::zeros(p, BY_ROW_COPIES * k), u_column: vec![0.0; q] }
    }
}

impl Workspace {
    pub(super) fn new(data: &Data<'_>, q: usize) -> Self {
        let (p, n, k) = (data.p, data.n, data.k);
        let a = data.a_dense();
        let mut ya = Dense::zeros(p, k);
        matmul(ya.as_mut(), Accum::Replace, data.y_ref(), a.as_ref().transpose(), 1.0, Par::Seq);
        let mut aat = Dense::zeros(k, k);
        outer_product_sum(&a, &a, &mut aat);
        Workspace {
            ytx: Dense::zeros(n, q),
            scores: Dense::zeros(n, q),
            a_t: transposed(&a),
            ya,
            bound: vec![0.0; n],
            y_mean: row_means(data.y, p),
            a_mean: row_means(data.a, k),
            gram: Dense::zeros(q, q),
            ybt: Dense::zeros(p, q),
            bbt: Dense::zeros(q, q),
            x_denominator: Dense::zeros(p, q),
            aat,
            theta_t: Dense::zeros(k, q),
            ua: Dense::zeros(q, k),
            uu: Dense::zeros(q, q),
            xty_u: 0.0,
            xya: Dense::zeros(q, k),
            fixed_coefficients: Dense::zeros(k, q),
            correction: Dense::zeros(q, k),
            numerator: Dense::zeros(q, k),
            theta_denominator: Dense::zeros(q, k),
            x_rows: Dense::zeros(q, p),
            row_max: vec![0.0; p],
            pass: Vec::new(),
            by_row_sum: Dense::zeros(p, k),
            y_t: (p * n <= SMALL_DATA_CELLS).then(|| transposed(&Dense::from_vec(p, n, data.y.to_vec()))),
            pass_small: None,
            moments: Moments::new(p, q, k),
            scales: vec![1.0; q],
            solve: RidgeSolve::new(q),
            route_buffers: [Dense::zeros(p, q), Dense::zeros(p, q), Dense::zeros(p, q)],
            route_complement: Dense::zeros(q, q),
            gram_ua: Dense::zeros(q, k),
            gram_theta: Dense::zeros(q, k),
            scores_outer: Dense::zeros(q, q),
        }
    }
}

/// Returns the row means of a column-major matrix with `rows` rows.
pub(super) fn row_means(values: &[f64], rows: usize) -> Vec<f64> {
    let mut sums = vec![0.0; rows];
    for column in values.chunks_exact(rows.max(1)) {
        sums.iter_mut().zip(column).for_each(|(s, v)| *s += v);
    }
    let columns = (values.len() / rows.max(1)).max(1) as f64;
    sums.iter_mut().for_each(|s| *s /= columns);
    sums
}

/// The U-step's solve, kept for the Gram route of the X-step.
pub(super) struct RidgeSolve {
    /// M = X'X + lambda I.
    pub(super) ridge: Dense,
    pub(super) inverse: Dense,
    /// M^-1 X'X.
    pub(super) inverse_gram: Dense,
    /// M^-1, transposed for the N x Q layout.
    pub(super) inverse_t: Dense,
    /// -(M^-1 X'X)' (Q x Q).
    pub(super) inverse_gram_t: Dense,
    /// Row means of U removed by the centring (1 x Q), and their negatives.
    pub(super) means: Dense,
    pub(super) offsets: Vec<f64>,
}

impl RidgeSolve {
    pub(super) fn new(q: usize) -> Self {
        RidgeSolve {
            ridge: Dense::zeros(q, q),
            inverse: Dense::zeros(q, q),
            inverse_gram: Dense::zeros(q, q),
            inverse_t: Dense::zeros(q, q),
            inverse_gram_t: Dense::zeros(q, q),
            means: Dense::zeros(1, q),
            offsets: vec![0.0; q],
        }
    }
}
