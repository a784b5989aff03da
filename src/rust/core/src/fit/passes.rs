//! Passes over Y: X'Y with the positive-part correction of the Theta-step,
//! max(Y, 0) B' when the Gram route declines, the residual sum of squares,
//! and the helper that splits units across threads.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatRef, Par};

use super::workspace::{PassBuffers, Workspace, BY_ROW_COPIES};
use crate::columns::{add_scaled_positive, combine_rows, transpose_into};
use crate::dense::{column_chunks, cross_product, dot, product, sum_of_squares, Dense};

/// Runs `body` on contiguous column ranges, each with its own input from
/// `inputs` (one per range of `ranges`), in parallel when there are several
/// ranges. Returns the per-range results in order, so that reductions are
/// deterministic for a given thread count.
pub(super) fn for_ranges_with<S: Send, T: Send>(
    ranges: Vec<std::ops::Range<usize>>,
    inputs: Vec<S>,
    body: impl Fn(std::ops::Range<usize>, S) -> T + Sync,
) -> Vec<T> {
    if ranges.len() <= 1 {
        return ranges.into_iter().zip(inputs).map(|(range, input)| body(range, input)).collect();
    }
    // Rayon's pool keeps its threads between iterations, where spawning
    // fresh threads would cost tens of microseconds per pass.
    let mut results: Vec<Option<T>> = (0..ranges.len()).map(|_| None).collect();
    rayon::scope(|scope| {
        let body = &body;
        for ((range, input), slot) in ranges.into_iter().zip(inputs).zip(results.iter_mut()) {
            scope.spawn(move |_| *slot = Some(body(range, input)));
        }
    });
    results.into_iter().map(|result| result.expect("every range ran in the scope")).collect()
}

/// Splits every column of `matrix` at the boundaries of `ranges` (row
/// ranges that cover its rows in order), and returns for each range its
/// slice of every column.
pub(super) fn split_rows<'a>(matrix: &'a mut Dense, ranges: &[std::ops::Range<usize>]) -> Vec<Vec<&'a mut [f64]>> {
    let rows = matrix.rows;
    let mut parts: Vec<Vec<&mut [f64]>> = ranges.iter().map(|_| Vec::with_capacity(matrix.cols)).collect();
    for column in matrix.data.chunks_exact_mut(rows) {
        let mut rest = column;
        for (range, part) in ranges.iter().zip(parts.iter_mut()) {
            let (head, tail) = rest.split_at_mut(range.len());
            part.push(head);
            rest = tail;
        }
    }
    parts
}

/// Runs `body` on contiguous column ranges, in parallel when the work is
/// large, and returns the per-range results in order.
pub(super) fn for_column_ranges<T: Send>(
    columns: usize,
    threads: usize,
    work_per_column: usize,
    body: impl Fn(std::ops::Range<usize>) -> T + Sync,
) -> Vec<T> {
    let ranges = column_chunks(columns, threads, work_per_column);
    let inputs = vec![(); ranges.len()];
    for_ranges_with(ranges, inputs, |range, ()| body(range))
}

/// Sets `out = Y B'` (P x Q) for `y` (P x N) and the scores `scores_t` = B'
/// (N x Q).
///
/// The product is small and its inner dimension N is large, which faer
/// does not split across threads. Here each thread takes a range of
/// columns, and the partial products are added in order, so the result is
/// the same for a given thread count.
pub(super) fn product_with_scores(y: &[f64], scores_t: &Dense, out: &mut Dense, threads: usize) {
    let (p, q) = (out.rows, out.cols);
    let partials = for_column_ranges(scores_t.rows, threads, 2 * p * q, |columns| {
        let mut partial = Dense::zeros(p, q);
        let y_range = MatRef::from_column_major_slice(&y[columns.start * p..columns.end * p], p, columns.len());
        let scores_range = scores_t.as_ref().subrows(columns.start, columns.len());
        matmul(partial.as_mut(), Accum::Replace, y_range, scores_range, 1.0, Par::Seq);
        partial
    });
    out.data.iter_mut().for_each(|v| *v = 0.0);
    for partial in partials {
        out.data.iter_mut().zip(&partial.data).for_each(|(o, v)| *o += v);
    }
}

/// Sets `work.scores = A'Theta' + U'` (N x Q), the scores B'.
pub(super) fn scores_from_parameters(u_t: &Dense, work: &mut Workspace) {
    let n = u_t.rows;
    for q in 0..u_t.cols {
        let terms = [(&work.a_t.data[..], work.theta_t.col(q)), (&u_t.data[q * n..], &[1.0][..])];
        combine_rows(&mut work.scores.data[q * n..(q + 1) * n], n, &terms, 0.0, 0..n);
    }
}

/// Number of columns of Y processed at a time in the fused passes, chosen so
/// that a P x block buffer (about 256 KiB) stays in cache.
pub(super) fn block_columns(p: usize) -> usize {
    (32_768 / p.max(1)).clamp(16, 512)
}

/// Sets `work.ytx = Y'X` and, when `positive_part` is set, `work.correction
/// = X' (max(max(Y, 0) - X U, 0) - (Y - X U)) A'`, the correction that turns
/// X'(Y - X U) A' into X' max(W, 0) A' for the non-negative Theta-step;
/// otherwise `work.correction` = 0.
///
/// Y is read once, a cache-sized block of columns at a time: the product
/// Y'X, then [`correct_column`] on each column while the block is in cache.
/// A column is skipped when its smallest entry is at least
/// `sum_q max_p X[p, q] max(U[q, n], 0)`, a bound on every entry of X u_n.
#[allow(clippy::too_many_arguments)]
pub(super) fn project_data(
    y: &[f64],
    summary: &DataSummary,
    x: &Dense,
    u_t: &Dense,
    a: &Dense,
    positive_part: bool,
    work: &mut Workspace,
    threads: usize,
) {
    let (p, q, n, k) = (x.rows, x.cols, u_t.rows, a.rows);
    let block = block_columns(p);
    let x_ref = x.as_ref();
    transpose_into(x, &mut work.x_rows);
    let largest = |values: &[f64]| values.iter().fold(0.0, |high: f64, &v| high.max(v));
    for (maximum, row) in work.row_max.iter_mut().zip(work.x_rows.data.chunks_exact(q)) {
        *maximum = largest(row);
    }
    if positive_part {
        work.bound.iter_mut().for_each(|v| *v = 0.0);
        for (qq, column) in x.data.chunks_exact(p).enumerate() {
            add_scaled_positive(&mut work.bound, &u_t.data[qq * n..(qq + 1) * n], largest(column));
        }
    }
    let bounds = Bounds { x_rows: &work.x_rows.data, row_max: &work.row_max };
    let bound = &work.bound;

    let check = UnitCheck { y, summary, u_t, a, bound, bounds: &bounds };

    // Small data: Y'X from Y' kept for the fit, as Q combinations of its P
    // columns, which costs less than setting up a product.
    if let Some(y_t) = &work.y_t {
        let PassBuffers { by_row, u_column, .. } = work.pass_small.get_or_insert_with(|| PassBuffers::new(p, q, k, 0));
        for qq in 0..q {
            let output = &mut work.ytx.data[qq * n..(qq + 1) * n];
            combine_rows(output, n, &[(&y_t.data[..], x.col(qq))], 0.0, 0..n);
        }
        by_row.data.iter_mut().for_each(|v| *v = 0.0);
        if positive_part {
            check.correct_units(0..n, by_row, u_column);
        }
        work.by_row_sum.data.iter_mut().for_each(|v| *v = 0.0);
        add_copies(by_row, &mut work.by_row_sum);
        cross_product(x, &work.by_row_sum, &mut work.correction);
        return;
    }

    // Each range of units gets its rows of every column of Y'X, and its
    // own buffers.
    let ranges = column_chunks(n, threads, 2 * p * q);
    let used = ranges.len();
    if work.pass.len() < ranges.len() {
        work.pass.resize_with(ranges.len(), || PassBuffers::new(p, q, k, block));
    }
    let inputs: Vec<(Vec<&mut [f64]>, &mut PassBuffers)> =
        split_rows(&mut work.ytx, &ranges).into_iter().zip(work.pass.iter_mut()).collect();
    for_ranges_with(ranges, inputs, |columns, (mut outputs, buffers)| {
        let PassBuffers { xty, by_row, u_column } = buffers;
        by_row.data.iter_mut().for_each(|v| *v = 0.0);
        let mut start = columns.start;
        while start < columns.end {
            let (end, local) = ((start + block).min(columns.end), start - columns.start);
            let width = end - start;
            // X'Y for a block of columns, Q x block: faer runs this shape at
            // full speed, while Y'X would make it copy Y's block first.
            let y_block = MatRef::from_column_major_slice(&y[start * p..end * p], p, width);
            let xty_block = faer::MatMut::from_column_major_slice_mut(&mut xty[..q * width], q, width);
            matmul(xty_block, Accum::Replace, x_ref.transpose(), y_block, 1.0, Par::Seq);
            for (qq, output) in outputs.iter_mut().enumerate() {
                let values = xty[qq..q * width].iter().step_by(q);
                output[local..local + width].iter_mut().zip(values).for_each(|(o, v)| *o = *v);
            }
            if positive_part {
                check.correct_units(start..end, by_row, u_column);
            }
            start = end;
        }
    });
    work.by_row_sum.data.iter_mut().for_each(|v| *v = 0.0);
    for buffers in work.pass.iter().take(used) {
        add_copies(&buffers.by_row, &mut work.by_row_sum);
    }
    cross_product(x, &work.by_row_sum, &mut work.correction);
}

/// Adds every copy in a [`PassBuffers::by_row`] to `sum` (P x K).
pub(super) fn add_copies(by_row: &Dense, sum: &mut Dense) {
    for copy in by_row.data.chunks_exact(sum.data.len()) {
        sum.data.iter_mut().zip(copy).for_each(|(o, v)| *o += v);
    }
}

/// Inputs of [`UnitCheck::correct_units`]: the data, the random effects and
/// the bounds of this iteration.
pub(super) struct UnitCheck<'a> {
    pub(super) y: &'a [f64],
    pub(super) summary: &'a DataSummary,
    pub(super) u_t: &'a Dense,
    pub(super) a: &'a Dense,
    /// Upper bound on the entries of X u_n, unit by unit.
    pub(super) bound: &'a [f64],
    pub(super) bounds: &'a Bounds<'a>,
}

impl UnitCheck<'_> {
    /// Adds to `by_row` (P x K) the rows `delta_n a_n'` of the
    /// positive-part correction from the units in `columns` (see
    /// [`correct_column`]). Units whose smallest entry of Y is at least the
    /// bound on X u_n contribute nothing, so they are skipped.
    pub(super) fn correct_units(&self, columns: std::ops::Range<usize>, by_row: &mut Dense, u_column: &mut [f64]) {
        let (n, k, p) = (self.u_t.rows, self.a.rows, self.bounds.row_max.len());
        for column in columns.filter(|&column| self.summary.column_min[column] < self.bound[column]) {
            for (qq, value) in u_column.iter_mut().enumerate() {
                *value = self.u_t.data[qq * n + column];
            }
            let y_column = &self.y[column * p..(column + 1) * p];
            let rows = self.summary.smallest_rows(column);
            let covariates = &self.a.data[column * k..(column + 1) * k];
            let copy = &mut by_row.data[(column % BY_ROW_COPIES) * p * k..(column % BY_ROW_COPIES + 1) * p * k];
            correct_column(y_column, rows, self.bound[column], u_column, covariates, self.bounds, copy);
        }
    }
}

/// Per-iteration facts about X for [`correct_column`].
pub(super) struct Bounds<'a> {
    /// X's rows one after another.
    pub(super) x_rows: &'a [f64],
    /// Largest entry of each row of X.
    pub(super) row_max: &'a [f64],
}

/// Adds `delta_p a'` to row p of `by_row` (P x K, by columns) for one
/// column y of Y, its random effects u and its covariates a, where `delta =
/// max(max(y, 0) - X u, 0) - (y - X u)`, so that X' `by_row` summed over
/// the units is X' Delta A'. `smallest_rows` lists the rows of y's smallest
/// entries in ascending order (from [`DataSummary`]) and `bound` bounds
/// every entry of X u from above.
///
/// delta is zero in a cell where y is non-negative and at least (X u)_p,
/// so only cells below `bound` (which include every negative cell) need
/// (X u)_p at all. The listed rows are visited in ascending order until one
/// reaches the bound. On data with few cells near zero that takes one or
/// two cells, so the Theta-step costs about one product X'Y instead of two
/// (forming X U, then X'(Y - X U)).
///
/// Limitation: when every listed row is below the bound, the whole column
/// is checked cell by cell. On data with many zeros or small values in most
/// columns (sparse counts, for example) that can cost several times a
/// product, so such fits take longer per iteration.
pub(super) fn correct_column(
    y: &[f64],
    smallest_rows: &[u32],
    bound: f64,
    u: &[f64],
    covariates: &[f64],
    bounds: &Bounds<'_>,
    by_row: &mut [f64],
) {
    let (q, p) = (u.len(), y.len());
    let mut correct_cell = |row: usize, value: f64| {
        let x_row = &bounds.x_rows[row * q..(row + 1) * q];
        let fitted: f64 = x_row.iter().zip(u).map(|(x, u)| x * u).sum();
        let delta = positive(positive(value) - fitted) - (value - fitted);
        for (kk, covariate) in covariates.iter().enumerate() {
            by_row[row + p * kk] += delta * covariate;
        }
    };
    let whole_column = smallest_rows.len() < p && smallest_rows.last().is_some_and(|&row| y[row as usize] < bound);
    if !whole_column {
        for &row in smallest_rows {
            let value = y[row as usize];
            if value >= bound {
                // Every row not yet visited is at least as large.
                return;
            }
            correct_cell(row as usize, value);
        }
        return;
    }
    // Rows beyond the list may be below the bound too.
    let positive_sum: f64 = u.iter().map(|&v| positive(v)).sum();
    for (row, &value) in y.iter().enumerate() {
        // (X u)_p <= max_q X[p, q] * sum_q max(u_q, 0).
        if value < bound && value < bounds.row_max[row] * positive_sum {
            correct_cell(row, value);
        }
    }
}

/// Returns max(value, 0). Unlike `f64::max` it needs no NaN handling (a NaN
/// gives 0 either way), so that loops over it compile to plain comparisons.
#[inline]
pub(super) fn positive(value: f64) -> f64 {
    if value > 0.0 {
        value
    } else {
        0.0
    }
}

/// Facts about Y that every iteration uses, gathered once per fit.
pub(super) struct DataSummary {
    /// ||Y||^2, for the residual sum of squares without a pass over Y.
    pub(super) squared_norm: f64,
    /// Smallest entry of each column of Y.
    pub(super) column_min: Vec<f64>,
    /// Rows of the `listed` smallest entries of each column, in ascending
    /// order of value, column by column.
    pub(super) smallest_rows: Vec<u32>,
    /// Rows listed per column: P / 8, at least 8 (or P), so that the list
    /// takes at most a sixteenth of Y's memory.
    pub(super) listed: usize,
}

impl DataSummary {
    pub(super) fn new(y: &[f64], p: usize) -> Self {
        let smallest = |values: &[f64]| values.iter().fold(f64::INFINITY, |low, &v| low.min(v));
        let column_min = y.chunks_exact(p).map(smallest).collect();
        let listed = (p / 8).max(8).min(p);
        let mut smallest_rows = Vec::with_capacity(listed * y.len() / p.max(1));
        let mut rows: Vec<u32> = Vec::with_capacity(p);
        for column in y.chunks_exact(p) {
            rows.clear();
            rows.extend(0..p as u32);
            let by_value = |i: &u32, j: &u32| column[*i as usize].total_cmp(&column[*j as usize]);
            if listed < p {
                rows.select_nth_unstable_by(listed - 1, by_value);
            }
            rows[..listed].sort_unstable_by(by_value);
            smallest_rows.extend_from_slice(&rows[..listed]);
        }
        DataSummary { squared_norm: sum_of_squares(y), column_min, smallest_rows, listed }
    }

    pub(super) fn smallest_rows(&self, column: usize) -> &[u32] {
        &self.smallest_rows[column * self.listed..(column + 1) * self.listed]
    }
}

/// Share of ||Y||^2 below which the residual sum of squares is computed by
/// a pass over Y instead of from the Gram identity.
pub(super) const GRAM_RSS_MIN_SHARE: f64 = 1e-4;

/// Returns ||Y - X B||^2 for the scores B = Theta A + U, given `work.gram`
/// = X'X, `work.xya` = X'(Y A') and the statistics of [`unit_statistics`](super::random_effects::unit_statistics)
/// for the same X and U, and `y_squared_norm` = ||Y||^2.
///
/// The Gram identity ||Y||^2 - 2 <X'Y, B> + <X'X, B B'> needs no pass over
/// Y: <X'Y, B> = <X'(Y A'), Theta> + <X'Y, U> and B B' = Theta A A' Theta'
/// + Theta (U A')' + (U A') Theta' + U U'. It subtracts terms of size
/// ||Y||^2 and so loses about log10(||Y||^2 / RSS) digits. Below
/// `GRAM_RSS_MIN_SHARE` of ||Y||^2, where more than four digits would be
/// lost and rounding could approach the relative change that the stopping
/// rule compares with epsilon, Y is read again.
pub(super) fn residual_sum_of_squares(
    y: &[f64],
    y_squared_norm: f64,
    x: &Dense,
    theta: &Dense,
    u_t: &Dense,
    work: &mut Workspace,
    threads: usize,
) -> f64 {
    let q = x.cols;
    let cross = dot(&work.xya.data, &theta.data) + work.xty_u;
    // B B' = Theta (A A' Theta' + (U A')') + (U A') Theta' + U U'.
    let mut theta_aat = Dense::zeros(q, theta.cols);
    product(theta, &work.aat, &mut theta_aat);
    let outer = &mut work.scores_outer;
    for i in 0..q {
        for j in 0..q {
            let mut value = work.uu.get(i, j);
            for kk in 0..theta.cols {
                value += (theta_aat.get(i, kk) + work.ua.get(i, kk)) * theta.get(j, kk) + theta.get(i, kk) * work.ua.get(j, kk);
            }
            outer.set(i, j, value);
        }
    }
    let from_gram = y_squared_norm - 2.0 * cross + dot(&work.gram.data, &outer.data);
    if from_gram >= GRAM_RSS_MIN_SHARE * y_squared_norm {
        return from_gram;
    }
    transpose_into(theta, &mut work.theta_t);
    scores_from_parameters(u_t, work);
    residual_sum_of_squares_by_pass(y, x, &work.scores, threads)
}

/// Returns ||Y - X B||^2 for the scores `scores_t` = B' (N x Q), reading Y
/// once in cache-sized blocks.
pub(super) fn residual_sum_of_squares_by_pass(y: &[f64], x: &Dense, scores_t: &Dense, threads: usize) -> f64 {
    let (p, q) = (x.rows, x.cols);
    let block = block_columns(p);
    let x_ref = x.as_ref();
    for_column_ranges(scores_t.rows, threads, 2 * p * q, |columns| {
        let mut r = vec![0.0; p * block];
        let mut sum = 0.0;
        let mut start = columns.start;
        while start < columns.end {
            let end = (start + block).min(columns.end);
            let width = end - start;
            let r_block = &mut r[..p * width];
            r_block.copy_from_slice(&y[start * p..end * p]);
            let r_mat = faer::MatMut::from_column_major_slice_mut(r_block, p, width);
            let s_block = scores_t.as_ref().subrows(start, width).transpose();
            matmul(r_mat, Accum::Add, x_ref, s_block, -1.0, Par::Seq);
            sum += sum_of_squares(r_block);
            start = end;
        }
        sum
    })
    .into_iter()
    .sum()
}
