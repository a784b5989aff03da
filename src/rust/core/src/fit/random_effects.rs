//! The U-step (ridge solution for the random effects), the scores of the
//! X-step formed in the same pass, and the moments of U over the units.

use super::passes::{for_ranges_with, split_rows};
use super::workspace::Workspace;
use crate::columns::{
    add_block_cross_product, combine_rows, combine_rows_positive, for_row_blocks, lane_dot, mirror_upper,
    scale_in_place, transpose_into,
};
use crate::dense::{column_chunks, dot, product, Dense};
use crate::error::Result;
use crate::linalg::Cholesky;

/// Prepares the U-step: the ridge solution `U = (X'X + lambda I)^{-1}
/// X'(Y - X Theta A)`, with its rows centred, is U' = Y'X M^-1' -
/// A'Theta' (M^-1 X'X)' - 1 m' for M = X'X + lambda I and the row means m.
/// Sets in `work.solve` the inverse M^-1 (by one Cholesky factorisation),
/// (M^-1 X'X)' and -m, and in `work.fixed_coefficients` -Theta' (M^-1
/// X'X)', for [`random_effects_and_scores`]. Needs `work.gram` = X'X and
/// `work.theta_t` = Theta' for the current X and Theta.
pub(super) fn update_random_effects(x: &Dense, work: &mut Workspace, lambda: f64) -> Result<()> {
    let q = x.cols;
    let solve = &mut work.solve;
    solve.ridge.copy_from(&work.gram);
    for i in 0..q {
        solve.ridge.data[i + q * i] += lambda;
    }
    // Products of N x Q by Q x Q matrices with the Q x Q inverse cost less
    // than triangular solves unit by unit.
    Cholesky::new(&solve.ridge, "X'X + lambda I")?.inverse_into(&mut solve.inverse);
    product(&solve.inverse, &work.gram, &mut solve.inverse_gram);
    transpose_into(&solve.inverse, &mut solve.inverse_t);
    transpose_into(&solve.inverse_gram, &mut solve.inverse_gram_t);
    solve.inverse_gram_t.data.iter_mut().for_each(|v| *v = -*v);
    product(&work.theta_t, &solve.inverse_gram_t, &mut work.fixed_coefficients);
    // The row means of the raw solution follow from those of Y'X (X'
    // times Y's row means) and of A' (A's row means), so the centring costs
    // no pass over U.
    for (qq, mean) in solve.means.data.iter_mut().enumerate() {
        let from_data: f64 = (0..q).map(|r| dot(x.col(r), &work.y_mean) * solve.inverse_t.get(r, qq)).sum();
        let from_fixed = dot(work.fixed_coefficients.col(qq), &work.a_mean);
        *mean = from_data + from_fixed;
    }
    for (offset, mean) in solve.offsets.iter_mut().zip(&solve.means.data) {
        *offset = -mean;
    }
    Ok(())
}

/// Sets U' (`u_t`) from the U-step's solve in `work.solve` (see
/// [`update_random_effects`]), `work.scores = max(A'Theta' + U', 0)` and
/// `work.bbt` = B B' for these scores B, a block of units at a time, and
/// returns how many scores are negative.
pub(super) fn random_effects_and_scores(u_t: &mut Dense, work: &mut Workspace, threads: usize) -> usize {
    let (n, q, k) = (u_t.rows, u_t.cols, work.a_t.cols);

    // Each range of units gets its rows of every column of U' and of the
    // scores, and returns its negative count and its part of B B'.
    let ranges = column_chunks(n, threads, 4 * q * (q + k + 1));
    let inputs: Vec<_> = split_rows(u_t, &ranges).into_iter().zip(split_rows(&mut work.scores, &ranges)).collect();
    let (ytx, a_t, solve) = (&work.ytx.data, &work.a_t.data, &work.solve);
    let (fixed_coefficients, theta_t) = (&work.fixed_coefficients, &work.theta_t);

    let parts = for_ranges_with(ranges, inputs, |units, (mut u_parts, mut score_parts)| {
        // The terms start at the range's first unit, so rows count from 0.
        let (ytx, a_t) = (&ytx[units.start..], &a_t[units.start..]);
        let mut bbt = Dense::zeros(q, q);
        let mut negative = 0;

        for_row_blocks(units.len(), |rows| {
            for (qq, u_part) in u_parts.iter_mut().enumerate() {
                let terms = [(ytx, solve.inverse_t.col(qq)), (a_t, fixed_coefficients.col(qq))];
                combine_rows(u_part, n, &terms, solve.offsets[qq], rows.clone());
            }
            for (qq, score_part) in score_parts.iter_mut().enumerate() {
                let terms = [(a_t, theta_t.col(qq)), (&u_parts[qq][..], &[1.0][..])];
                negative += combine_rows_positive(score_part, n, &terms, 0.0, rows.clone());
            }

            // B B' for the block, each pair once.
            for j in 0..q {
                for i in 0..=j {
                    bbt.data[i + q * j] += lane_dot(&score_parts[i][rows.clone()], &score_parts[j][rows.clone()]);
                }
            }
        });
        (negative, bbt)
    });

    // Add the ranges' parts in order, so the sum does not depend on timing.
    work.bbt.data.iter_mut().for_each(|v| *v = 0.0);
    let mut negative = 0;
    for (count, bbt) in parts {
        negative += count;
        work.bbt.data.iter_mut().zip(&bbt.data).for_each(|(o, v)| *o += v);
    }
    mirror_upper(&mut work.bbt);
    negative
}

/// Sets `work.ua = U A'`, `work.uu = U U'` and `work.xty_u = <X'Y, U>` in
/// one pass over the units.
pub(super) fn unit_statistics(u_t: &Dense, work: &mut Workspace) {
    let n = u_t.rows;
    work.ua.data.iter_mut().for_each(|v| *v = 0.0);
    work.uu.data.iter_mut().for_each(|v| *v = 0.0);
    let mut xty_u = 0.0;
    for_row_blocks(n, |rows| {
        add_block_cross_product(&mut work.ua, u_t, &work.a_t, rows.clone(), false);
        add_block_cross_product(&mut work.uu, u_t, u_t, rows.clone(), true);
        for qq in 0..u_t.cols {
            let block = qq * n + rows.start..qq * n + rows.end;
            xty_u += lane_dot(&work.ytx.data[block.clone()], &u_t.data[block]);
        }
    });
    mirror_upper(&mut work.uu);
    work.xty_u = xty_u;
}

/// Rescales X to unit column sums and moves the scale into Theta's rows and
/// the columns of U' (`u_t`), as [`normalise`](super::normalise) does for U; sets `scales`
/// to the factors (1 where a column sum is not positive).
pub(super) fn normalise_transposed(x: &mut Dense, theta: &mut Dense, u_t: &mut Dense, scales: &mut [f64]) {
    let (p, n) = (x.rows, u_t.rows);
    for q in 0..x.cols {
        let sum: f64 = x.col(q).iter().sum();
        scales[q] = 1.0;
        if !(sum > 0.0 && sum.is_finite()) {
            continue;
        }
        scales[q] = sum;
        x.data[q * p..(q + 1) * p].iter_mut().for_each(|v| *v /= sum);
        for k in 0..theta.cols {
            let value = theta.get(q, k) * sum;
            theta.set(q, k, value);
        }
        scale_in_place(&mut u_t.data[q * n..(q + 1) * n], sum);
    }
}
