//! The Gram route: max(Y, 0) B' and the moments of U from matrices formed
//! once per fit, so that an iteration reads Y only for X'Y.

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatRef, Par};

use super::workspace::Workspace;
use super::{par_for, Data};
use crate::columns::add_scaled;
use crate::dense::{cross_product, dot, product, Dense};

/// Fixed products of max(Y, 0) that give the X-step's numerator max(Y, 0) B'
/// without a pass over Y, while few scores are negative.
///
/// With U = (Y'X M^-1 - A'Theta' X'X M^-1 - 1 m')' (m the row means that the
/// U-step removes, M symmetric), max(Y, 0) (Theta A + U)' is
/// `G X M^-1 + Y+A' Theta' (I - X'X M^-1) - (Y+ 1) m'` with G = max(Y, 0) Y'.
/// The scores' positive part then subtracts `max(Y, 0)_n s` for each
/// negative score s of unit n.
pub(super) struct GramRoute {
    /// max(Y, 0) Y' (P x P).
    pub(super) g: Dense,
    /// Y Y' (P x P) when Y has negative entries; otherwise it equals `g`.
    pub(super) g_raw: Option<Dense>,
    /// max(Y, 0) A' (P x K).
    pub(super) ypa: Dense,
    /// Row sums of max(Y, 0) (P x 1).
    pub(super) ypsum: Dense,
}

impl GramRoute {
    /// Returns the route when it pays. G costs P^2 N / 2 once (Y Y' is
    /// symmetric) and saves P N Q per iteration for P^2 Q, so it is formed
    /// when P <= 100 Q, where it pays within about fifty iterations, and
    /// when it takes at most a quarter of Y's memory. `y_positive` must be
    /// `data.y_positive()`, which borrows Y itself when Y has no negative
    /// entry.
    ///
    /// NOTE: a fit that stops within a few iterations still pays the set-up,
    /// about 0.3 s at P = 200, N = 1e5 on a 2-core machine.
    pub(super) fn for_data(data: &Data<'_>, y_positive: &[f64], q: usize, a: &Dense, threads: usize) -> Option<Self> {
        let (p, n) = (data.p, data.n);
        if p > 100 * q || 4 * p > n {
            return None;
        }
        let y_pos = MatRef::from_column_major_slice(y_positive, p, n);
        let y_y = symmetric_gram(data.y_ref(), threads);
        let (g, g_raw) = if std::ptr::eq(y_positive.as_ptr(), data.y.as_ptr()) {
            (y_y, None)
        } else {
            let mut g = Dense::zeros(p, p);
            matmul(g.as_mut(), Accum::Replace, y_pos, data.y_ref().transpose(), 1.0, par_for(threads));
            (g, Some(y_y))
        };
        let mut ypa = Dense::zeros(p, data.k);
        matmul(ypa.as_mut(), Accum::Replace, y_pos, a.as_ref().transpose(), 1.0, Par::Seq);
        let ypsum = Dense::from_vec(p, 1, y_positive.chunks_exact(p).fold(vec![0.0; p], |mut sum, column| {
            sum.iter_mut().zip(column).for_each(|(s, v)| *s += v);
            sum
        }));
        Some(GramRoute { g, g_raw, ypa, ypsum })
    }
}

/// Returns `y y'` (P x P), forming its lower triangle only and mirroring it,
/// which halves the work of a full product.
pub(super) fn symmetric_gram(y: MatRef<'_, f64>, threads: usize) -> Dense {
    let p = y.nrows();
    let mut out = Dense::zeros(p, p);
    faer::linalg::matmul::triangular::matmul(
        out.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        y,
        BlockStructure::Rectangular,
        y.transpose(),
        BlockStructure::Rectangular,
        1.0,
        par_for(threads),
    );
    for j in 0..p {
        for i in 0..j {
            out.data[i + p * j] = out.data[j + p * i];
        }
    }
    out
}

/// Most negative scores for which the Gram route corrects unit by unit
/// instead of reading Y: a share of the N Q scores.
pub(super) const GRAM_ROUTE_MAX_NEGATIVE_SHARE: f64 = 0.125;

/// Sets `work.ybt = max(Y, 0) B'` from the Gram route (see [`GramRoute`]),
/// for the scores B = max(Theta A + U, 0) of `work.scores`, which
/// [`random_effects_and_scores`](super::random_effects::random_effects_and_scores) set with `negative` negative entries. X and Theta are
/// those of the U-step that left `work.solve`, and [`unit_moments_from_gram`]
/// must have run for them. Returns false, leaving `work.ybt` unset, when
/// there are too many negative scores.
pub(super) fn gram_route_product(
    route: &GramRoute,
    y_positive: &[f64],
    x: &Dense,
    u_t: &Dense,
    negative: usize,
    work: &mut Workspace,
) -> bool {
    let (p, n, q) = (x.rows, u_t.rows, x.cols);
    if negative as f64 > GRAM_ROUTE_MAX_NEGATIVE_SHARE * (n * q) as f64 {
        return false;
    }
    let solve = &work.solve;
    let [gx, ypa_theta, fixed_part] = &mut work.route_buffers;

    // G X M^-1; when Y has no negative entry, G X is the Y Y' X of the
    // moments.
    let g_x = match route.g_raw {
        Some(_) => {
            product(&route.g, x, gx);
            &*gx
        }
        None => &work.moments.gx,
    };
    product(g_x, &solve.inverse_t, &mut work.ybt);

    // + Y+A' Theta' (I - (M^-1 X'X)').
    let complement = &mut work.route_complement;
    for (i, (value, negated)) in complement.data.iter_mut().zip(&solve.inverse_gram_t.data).enumerate() {
        *value = if i % (q + 1) == 0 { 1.0 } else { 0.0 } + negated;
    }
    product(&route.ypa, &work.theta_t, ypa_theta);
    product(ypa_theta, complement, fixed_part);

    // - (Y+ 1) m'.
    for qq in 0..q {
        let mean = solve.means.data[qq];
        let column = &mut work.ybt.data[qq * p..(qq + 1) * p];
        for ((o, f), s) in column.iter_mut().zip(fixed_part.col(qq)).zip(&route.ypsum.data) {
            *o += f - s * mean;
        }
    }

    // - max(Y, 0)_n s for every negative score s, among the scores that
    // the positive part set to 0.
    if negative > 0 {
        let k = work.a_t.cols;
        for qq in 0..q {
            let column = &mut work.ybt.data[qq * p..(qq + 1) * p];
            let clipped = work.scores.data[qq * n..(qq + 1) * n].iter().enumerate().filter(|(_, &b)| b == 0.0);
            for (unit, _) in clipped {
                let fixed: f64 = (0..k).map(|kk| work.a_t.data[kk * n + unit] * work.theta_t.get(kk, qq)).sum();
                let score = fixed + u_t.data[qq * n + unit];
                if score < 0.0 {
                    add_scaled(column, &y_positive[unit * p..(unit + 1) * p], -score);
                }
            }
        }
    }
    true
}

/// Sets `work.uu = U U'`, `work.ua = U A'` and `work.yu = Y U'` for the U
/// that [`random_effects_and_scores`](super::random_effects::random_effects_and_scores) just formed from `x` (the X of the
/// U-step), without a pass over the units.
///
/// U' = Z C for Z = [Y'X, A', 1] (N x (Q + K + 1)) and C the U-step's
/// coefficients, so U U' = C' (Z'Z) C, U A' = C' Z'A' and Y U' = (Y Z) C.
/// Z'Z is assembled from X'(Y Y')X, X'(Y A'), A A' and the row sums of Y
/// and A, all of them at most P x P.
pub(super) fn unit_moments_from_gram(route: &GramRoute, x: &Dense, work: &mut Workspace) {
    let (p, q, k, n) = (x.rows, x.cols, work.a_t.cols, work.a_t.rows);
    let m = q + k + 1;
    let units = n as f64;
    let moments = &mut work.moments;

    // Y Z = [Y Y' X, Y A', Y 1] (P x m) and Z'Z = [X' Y Z; A Z; 1' Z].
    product(route.g_raw.as_ref().unwrap_or(&route.g), x, &mut moments.gx);
    for (column, values) in moments.yz.data.chunks_exact_mut(p).enumerate() {
        let source = match column {
            c if c < q => moments.gx.col(c),
            c if c < q + k => work.ya.col(c - q),
            _ => &work.y_mean[..],
        };
        let scale = if column == m - 1 { units } else { 1.0 };
        values.iter_mut().zip(source).for_each(|(v, s)| *v = scale * s);
    }
    cross_product(x, &moments.yz, &mut moments.xyz);
    for j in 0..m {
        for i in 0..m {
            let value = if i < q {
                moments.xyz.get(i, j)
            } else if j < q {
                moments.xyz.get(j, i)
            } else {
                // The block of [A', 1]: A A', A 1 = N mean(A) and 1'1 = N.
                match (i - q < k, j - q < k) {
                    (true, true) => work.aat.get(i - q, j - q),
                    (true, false) => units * work.a_mean[i - q],
                    (false, true) => units * work.a_mean[j - q],
                    (false, false) => units,
                }
            };
            moments.ztz.set(i, j, value);
        }
    }

    // C = [M^-1'; -Theta'(M^-1 X'X)'; -m'].
    for qq in 0..q {
        for r in 0..q {
            moments.c.set(r, qq, work.solve.inverse_t.get(r, qq));
        }
        for kk in 0..k {
            moments.c.set(q + kk, qq, work.fixed_coefficients.get(kk, qq));
        }
        moments.c.set(m - 1, qq, work.solve.offsets[qq]);
    }
    product(&moments.ztz, &moments.c, &mut moments.ztz_c);
    cross_product(&moments.c, &moments.ztz_c, &mut work.uu);
    for kk in 0..k {
        for qq in 0..q {
            let value: f64 = (0..m).map(|r| moments.c.get(r, qq) * moments.ztz.get(r, q + kk)).sum();
            work.ua.set(qq, kk, value);
        }
    }
    product(&moments.yz, &moments.c, &mut moments.yu);
}

/// Rescales the moments of [`unit_moments_from_gram`] to U's rows after
/// [`normalise_transposed`](super::random_effects::normalise_transposed) multiplied them by `work.scales`, and sets
/// `work.xty_u = <X'Y, U> = <X, Y U'>` for the normalised X.
pub(super) fn rescale_unit_moments(x: &Dense, work: &mut Workspace) {
    let q = x.cols;
    let scales = &work.scales;
    for j in 0..q {
        for i in 0..q {
            let value = work.uu.get(i, j) * scales[i] * scales[j];
            work.uu.set(i, j, value);
        }
    }
    for kk in 0..work.ua.cols {
        for i in 0..q {
            let value = work.ua.get(i, kk) * scales[i];
            work.ua.set(i, kk, value);
        }
    }
    let p = x.rows;
    for (j, column) in work.moments.yu.data.chunks_exact_mut(p).enumerate() {
        column.iter_mut().for_each(|v| *v *= scales[j]);
    }
    work.xty_u = dot(&x.data, &work.moments.yu.data);
}
