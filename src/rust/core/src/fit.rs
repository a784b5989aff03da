//! The NMF-RE estimation loop: ridge (BLUP) updates for U, multiplicative
//! non-negative updates for X and Theta, variance updates and the df cap.

use std::borrow::Cow;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatRef, Par};

use crate::dense::{
    column_chunks, cross_product, dot, gemm, outer_product_sum, product, safe_divide, sum_of_squares, Dense,
};
use crate::dfcap::{effective_df, raise_lambda_to_cap, raise_lambda_to_cap_within, CapRule};
use crate::error::{check_shape, NmfreError, Result};
use crate::init::nndsvdar;
use crate::accelerate::Extrapolation;
use crate::linalg::{symmetric_eigenvalues, Cholesky};

/// Floor for X and Theta and for the denominators of the multiplicative updates.
pub const EPS: f64 = 1e-10;
/// Bounds that sigma2 and tau2 are clipped to after each update.
pub const VARIANCE_MIN: f64 = 1e-12;
pub const VARIANCE_MAX: f64 = 1e12;

/// Constraint on Theta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThetaMode {
    /// Theta >= 0, updated multiplicatively.
    NonNegative,
    /// Sign-free Theta, updated by exact least squares.
    Free,
}

/// Optional user-supplied starting values; missing ones use the defaults.
#[derive(Debug, Clone, Default)]
pub struct StartValues {
    pub x: Option<Dense>,
    pub theta: Option<Dense>,
    pub u: Option<Dense>,
}

/// Tuning of the estimation loop.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub rank: usize,
    pub theta_mode: ThetaMode,
    pub cap: CapRule,
    pub maxit: usize,
    /// Tolerance on the relative change of the objective.
    pub epsilon: f64,
    /// Seed of the ChaCha generator behind the NNDSVDar perturbation.
    pub seed: u64,
    pub sigma2_start: f64,
    pub tau2_start: f64,
    /// First iteration at which sigma2 is updated.
    pub sigma2_update_from: usize,
    /// sigma2 is updated at every iteration that is a multiple of this.
    pub sigma2_update_every: usize,
    /// Update tau2 each iteration when the cap is off; false keeps it fixed.
    pub update_tau2: bool,
    pub start: StartValues,
    pub threads: usize,
    /// After the relative-change rule is met, continue the same updates,
    /// with undamped variance updates, until the fixed-point residuals fall
    /// below `kkt_tolerance`.
    pub polish: bool,
    pub kkt_tolerance: f64,
    /// While polishing, update sigma2 and tau2 undamped to their fixed
    /// points instead of holding them.
    pub polish_variances: bool,
    /// While polishing, take squared extrapolation steps in log space that
    /// are kept only when they bring X and Theta closer to a fixed point.
    pub extrapolate: bool,
    /// Random starts run in addition to the NNDSVDar (or user) start; the fit
    /// with the lowest final objective is returned.
    pub nstart: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            rank: 2,
            theta_mode: ThetaMode::NonNegative,
            cap: CapRule::Rate(0.1),
            maxit: 50_000,
            epsilon: 1e-8,
            seed: 1,
            sigma2_start: 1.0,
            tau2_start: 1.0,
            sigma2_update_from: 50,
            sigma2_update_every: 10,
            update_tau2: true,
            start: StartValues::default(),
            threads: 1,
            polish: true,
            kkt_tolerance: 1e-9,
            polish_variances: true,
            extrapolate: true,
            nstart: 0,
        }
    }
}

/// Reason the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Converged,
    /// Relative change and fixed-point residuals both below their tolerances.
    Certified,
    MaxIterations,
}

impl StopReason {
    pub fn describe(&self) -> &'static str {
        match self {
            StopReason::Converged => "relative change of the objective below epsilon",
            StopReason::Certified => "relative change below epsilon and fixed-point residuals below tolerance",
            StopReason::MaxIterations => "maximum number of iterations reached",
        }
    }
}

/// The observed data: Y (P x N) and the covariates A (K x N), both borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    pub y: &'a [f64],
    pub a: &'a [f64],
    pub p: usize,
    pub n: usize,
    pub k: usize,
}

impl<'a> Data<'a> {
    pub fn new(y: &'a [f64], p: usize, n: usize, a: &'a [f64], k: usize) -> Result<Self> {
        if p == 0 || n == 0 {
            return Err(NmfreError::InvalidInput("`Y` must have at least one row and one column".into()));
        }
        if k == 0 {
            return Err(NmfreError::InvalidInput("`A` must have at least one row".into()));
        }
        check_shape("Y", y.len(), p, n)?;
        check_shape("A", a.len(), k, n)?;
        if let Some(index) = y.iter().position(|v| !v.is_finite()) {
            return Err(NmfreError::InvalidInput(format!(
                "`Y` has a non-finite value at row {}, column {}",
                index % p + 1,
                index / p + 1
            )));
        }
        if let Some(index) = a.iter().position(|v| !v.is_finite()) {
            return Err(NmfreError::InvalidInput(format!(
                "`A` has a non-finite value at row {}, column {}",
                index % k + 1,
                index / k + 1
            )));
        }
        Ok(Data { y, a, p, n, k })
    }

    pub fn y_ref(&self) -> MatRef<'a, f64> {
        MatRef::from_column_major_slice(self.y, self.p, self.n)
    }

    pub fn a_dense(&self) -> Dense {
        Dense::from_vec(self.k, self.n, self.a.to_vec())
    }

    /// Returns max(Y, 0), borrowing Y when it has no negative entry.
    pub fn y_positive(&self) -> Cow<'a, [f64]> {
        if self.y.iter().all(|&v| v >= 0.0) {
            Cow::Borrowed(self.y)
        } else {
            Cow::Owned(self.y.iter().map(|&v| v.max(0.0)).collect())
        }
    }
}

/// A fitted NMF-RE model.
#[derive(Debug, Clone)]
pub struct Fit {
    pub x: Dense,
    pub theta: Dense,
    pub u: Dense,
    pub sigma2: f64,
    pub tau2: f64,
    pub lambda: f64,
    /// dfU at the final X and lambda.
    pub dfu: f64,
    /// Ceiling on dfU, or None when the cap is off.
    pub cap: Option<f64>,
    /// Iterations at which the cap raised lambda.
    pub cap_hits: usize,
    pub cap_first_hit: Option<usize>,
    pub cap_last_hit: Option<usize>,
    pub iterations: usize,
    pub stop_reason: StopReason,
    /// Residual sum of squares ||Y - X(Theta A + U)||^2 at the end.
    pub rss: f64,
    /// Penalised objective after each iteration.
    pub objective: Vec<f64>,
    /// Iterations of the multiplicative (paper's) phase; the rest polished.
    pub paper_iterations: usize,
    /// Fixed-point residual of X over the last iteration (see
    /// `fixed_point_residual`).
    pub kkt_x: f64,
    /// The same for Theta; for sign-free Theta the change is relative to the
    /// largest entry of its row.
    pub kkt_theta: f64,
    /// Largest relative change of sigma2 or tau2 at their last update.
    pub variance_change: f64,
    /// One entry per start when several were run, the first being the
    /// NNDSVDar (or user) start; empty for a single start.
    pub starts: Vec<StartSummary>,
    /// Index into `starts` of the returned fit.
    pub best_start: usize,
}

/// Outcome of the fit from one start.
#[derive(Debug, Clone)]
pub struct StartSummary {
    pub objective: f64,
    pub converged: bool,
    pub iterations: usize,
    pub theta: Dense,
}

impl Fit {
    pub fn converged(&self) -> bool {
        matches!(self.stop_reason, StopReason::Converged | StopReason::Certified)
    }

    /// Computes the trace-based intraclass correlation
    /// `tau2 tr(X'X) / (tau2 tr(X'X) + sigma2 P)`: the share of the total
    /// variance of a unit's column, `tr(tau2 X X' + sigma2 I_P)`, that the
    /// random effects carry.
    pub fn intraclass_correlation(&self) -> f64 {
        let random = self.tau2 * self.x.squared_norm();
        let total = random + self.sigma2 * self.x.rows as f64;
        if total > 0.0 {
            random / total
        } else {
            f64::NAN
        }
    }

    /// Computes X (Theta A + U), the P x N fitted values.
    pub fn fitted(&self, data: &Data<'_>) -> Dense {
        let mut scores = Dense::zeros(self.theta.rows, data.n);
        product(&self.theta, &data.a_dense(), &mut scores);
        for (s, u) in scores.data.iter_mut().zip(&self.u.data) {
            *s += u;
        }
        let mut out = Dense::zeros(data.p, data.n);
        product(&self.x, &scores, &mut out);
        out
    }
}

/// Parameters and variances as the loop updates them.
pub(crate) struct State {
    pub(crate) x: Dense,
    pub(crate) theta: Dense,
    pub(crate) u: Dense,
    pub(crate) sigma2: f64,
    pub(crate) tau2: f64,
}

/// Buffers reused across iterations, so that an iteration allocates only
/// Q x Q and Q x K temporaries.
struct Workspace {
    /// X'Y for the current X (Q x N).
    xty: Dense,
    /// Theta A for the current Theta (Q x N).
    fixed: Dense,
    /// Positive part of Theta A + U in the X-step, then X'max(W, 0) (or
    /// X'W for a sign-free Theta) in the Theta-step (Q x N).
    scratch: Dense,
    gram: Dense,
    ybt: Dense,
    bbt: Dense,
    x_denominator: Dense,
    aat: Dense,
}

impl Workspace {
    fn new(p: usize, n: usize, q: usize, k: usize) -> Self {
        Workspace {
            xty: Dense::zeros(q, n),
            fixed: Dense::zeros(q, n),
            scratch: Dense::zeros(q, n),
            gram: Dense::zeros(q, q),
            ybt: Dense::zeros(p, q),
            bbt: Dense::zeros(q, q),
            x_denominator: Dense::zeros(p, q),
            aat: Dense::zeros(k, k),
        }
    }
}

fn par_for(threads: usize) -> Par {
    if threads > 1 {
        Par::rayon(threads)
    } else {
        Par::Seq
    }
}

fn validate_options(data: &Data<'_>, options: &FitOptions) -> Result<()> {
    let q = options.rank;
    if q == 0 || q > data.p.min(data.n) {
        return Err(NmfreError::InvalidInput(format!(
            "`rank` must be between 1 and min(P, N) = {}, not {q}",
            data.p.min(data.n)
        )));
    }
    options.cap.validate()?;
    if !(options.epsilon.is_finite() && options.epsilon >= 0.0) {
        return Err(NmfreError::InvalidInput("`epsilon` must be a non-negative finite number".into()));
    }
    for (name, value) in [("sigma2 start", options.sigma2_start), ("tau2 start", options.tau2_start)] {
        if !(value.is_finite() && value > 0.0) {
            return Err(NmfreError::InvalidInput(format!("{name} must be a positive finite number, not {value}")));
        }
    }
    if !(options.kkt_tolerance.is_finite() && options.kkt_tolerance > 0.0) {
        return Err(NmfreError::InvalidInput("the fixed-point tolerance must be a positive finite number".into()));
    }
    if options.sigma2_update_every == 0 {
        return Err(NmfreError::InvalidInput("the sigma2 update interval must be at least 1".into()));
    }
    validate_start(data, q, &options.start)
}

/// Checks the shapes and values of starting values for a rank-`q` fit.
fn validate_start(data: &Data<'_>, q: usize, start: &StartValues) -> Result<()> {
    if let Some(x) = &start.x {
        check_shape("start X", x.data.len(), data.p, q)?;
        if x.data.iter().any(|v| !(v.is_finite() && *v >= 0.0)) || x.data.iter().all(|&v| v == 0.0) {
            return Err(NmfreError::InvalidInput("start X must be non-negative, finite and not all zero".into()));
        }
    }
    if let Some(theta) = &start.theta {
        check_shape("start Theta", theta.data.len(), q, data.k)?;
        if theta.data.iter().any(|v| !v.is_finite()) {
            return Err(NmfreError::InvalidInput("start Theta must be finite".into()));
        }
    }
    if let Some(u) = &start.u {
        check_shape("start U", u.data.len(), q, data.n)?;
        if u.data.iter().any(|v| !v.is_finite()) {
            return Err(NmfreError::InvalidInput("start U must be finite".into()));
        }
    }
    Ok(())
}

/// Rescales X to unit column sums and moves the scale into Theta's and U's rows.
///
/// The products X Theta and X U are unchanged, which is what makes the basis
/// identifiable without changing the fit.
pub fn normalise(x: &mut Dense, theta: &mut Dense, u: &mut Dense) {
    for q in 0..x.cols {
        let sum: f64 = x.col(q).iter().sum();
        if !(sum > 0.0 && sum.is_finite()) {
            continue;
        }
        for i in 0..x.rows {
            let value = x.get(i, q) / sum;
            x.set(i, q, value);
        }
        for k in 0..theta.cols {
            let value = theta.get(q, k) * sum;
            theta.set(q, k, value);
        }
        for n in 0..u.cols {
            let value = u.get(q, n) * sum;
            u.set(q, n, value);
        }
    }
}

pub(crate) fn initial_state(data: &Data<'_>, y_positive: &[f64], options: &FitOptions) -> Result<State> {
    let q = options.rank;
    let mut x = match &options.start.x {
        Some(x) => x.clone(),
        None => {
            let y_pos = MatRef::from_column_major_slice(y_positive, data.p, data.n);
            nndsvdar(y_pos, q, options.seed, par_for(options.threads))?
        }
    };
    let mut theta = options.start.theta.clone().unwrap_or_else(|| Dense::filled(q, data.k, 1.0));
    let mut u = options.start.u.clone().unwrap_or_else(|| Dense::zeros(q, data.n));
    normalise(&mut x, &mut theta, &mut u);
    Ok(State { x, theta, u, sigma2: options.sigma2_start, tau2: options.tau2_start })
}

/// Runs `body` on contiguous column ranges, in parallel when the work is large,
/// and returns the per-range results in order so that reductions are
/// deterministic for a given thread count.
fn for_column_ranges<T: Send>(
    columns: usize,
    threads: usize,
    work_per_column: usize,
    body: impl Fn(std::ops::Range<usize>) -> T + Sync,
) -> Vec<T> {
    let ranges = column_chunks(columns, threads, work_per_column);
    if ranges.len() <= 1 {
        return ranges.into_iter().map(&body).collect();
    }
    std::thread::scope(|scope| {
        let body = &body;
        let handles: Vec<_> = ranges[1..].iter().cloned().map(|range| scope.spawn(move || body(range))).collect();
        let mut results = vec![body(ranges[0].clone())];
        for handle in handles {
            match handle.join() {
                Ok(value) => results.push(value),
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
        results
    })
}

/// Sets `out = Y B'` (P x Q) for `y` (P x N) and the scores B (Q x N).
///
/// The product is small and its inner dimension N is large, which faer
/// does not split across threads. Here each thread takes a range of
/// columns, and the partial products are added in order, so the result is
/// the same for a given thread count.
fn product_with_scores(y: &[f64], scores: &Dense, out: &mut Dense, threads: usize) {
    let (p, q) = (out.rows, out.cols);
    let partials = for_column_ranges(scores.cols, threads, 2 * p * q, |columns| {
        let mut partial = Dense::zeros(p, q);
        let y_range = MatRef::from_column_major_slice(&y[columns.start * p..columns.end * p], p, columns.len());
        let scores_values = &scores.data[columns.start * q..columns.end * q];
        let scores_range = MatRef::from_column_major_slice(scores_values, q, columns.len());
        matmul(partial.as_mut(), Accum::Replace, y_range, scores_range.transpose(), 1.0, Par::Seq);
        partial
    });
    out.data.iter_mut().for_each(|v| *v = 0.0);
    for partial in partials {
        out.data.iter_mut().zip(&partial.data).for_each(|(o, v)| *o += v);
    }
}

/// Sets `fixed = Theta A`.
fn fixed_scores(theta: &Dense, a: &Dense, fixed: &mut Dense, par: Par) {
    gemm(fixed, theta, false, a, false, 1.0, false, par);
}

/// Number of columns of Y processed at a time in the fused passes, chosen so
/// that a P x block buffer (about 256 KiB) stays in cache.
fn block_columns(p: usize) -> usize {
    (32_768 / p.max(1)).clamp(16, 512)
}

/// Sets `work.xty = X'Y` and, when `positive_part` is set, `work.scratch =
/// X' (max(max(Y, 0) - X U, 0) - (Y - X U))`, the correction that turns
/// X'(Y - X U) into X' max(W, 0) for the non-negative Theta-step; otherwise
/// `work.scratch` = 0.
///
/// Y is read once, a cache-sized block of columns at a time: the product
/// X'Y, then [`correct_column`] on each column while the block is in cache.
/// A column is skipped when its smallest entry is at least
/// `sum_q max_p X[p, q] max(U[q, n], 0)`, a bound on every entry of X u_n.
fn project_data(
    y: &[f64],
    summary: &DataSummary,
    x: &Dense,
    u: &Dense,
    positive_part: bool,
    work: &mut Workspace,
    threads: usize,
) {
    let (p, q) = (x.rows, x.cols);
    let block = block_columns(p);
    let chunks = p.div_ceil(CHUNK_ROWS);
    let x_ref = x.as_ref();
    let x_rows = transposed(x);
    let largest = |values: &[f64]| values.iter().fold(0.0, |high: f64, &v| high.max(v));
    let row_max: Vec<f64> = x_rows.data.chunks_exact(q).map(largest).collect();
    let chunk_row_max: Vec<f64> = row_max.chunks(CHUNK_ROWS).map(largest).collect();
    let column_max: Vec<f64> = x.data.chunks_exact(p).map(largest).collect();
    let bounds = Bounds { x_rows: &x_rows.data, row_max: &row_max, chunk_row_max: &chunk_row_max };
    for_column_pairs_mut(&mut work.xty.data, &mut work.scratch.data, q, threads, 2 * p * q, |columns, xty, correction| {
        let mut start = columns.start;
        while start < columns.end {
            let end = (start + block).min(columns.end);
            let (local, local_end) = (start - columns.start, end - columns.start);
            let y_block = MatRef::from_column_major_slice(&y[start * p..end * p], p, end - start);
            let xty_values = &mut xty[local * q..local_end * q];
            let xty_block = faer::MatMut::from_column_major_slice_mut(xty_values, q, end - start);
            matmul(xty_block, Accum::Replace, x_ref.transpose(), y_block, 1.0, Par::Seq);
            let block_correction = &mut correction[local * q..local_end * q];
            block_correction.iter_mut().for_each(|v| *v = 0.0);
            let block_columns = y[start * p..end * p]
                .chunks_exact(p)
                .zip(u.data[start * q..end * q].chunks_exact(q))
                .zip(&summary.column_min[start..end])
                .zip(summary.chunk_min[start * chunks..end * chunks].chunks_exact(chunks))
                .zip(block_correction.chunks_exact_mut(q))
                .filter(|_| positive_part);
            for ((((y_column, u_column), &smallest), chunk_min), out) in block_columns {
                let bound: f64 = u_column.iter().zip(&column_max).map(|(&u, m)| positive(u) * m).sum();
                if smallest < bound {
                    correct_column(y_column, chunk_min, u_column, &bounds, out);
                }
            }
            start = end;
        }
    });
}

/// Per-iteration facts about X for [`correct_column`].
struct Bounds<'a> {
    /// X's rows one after another.
    x_rows: &'a [f64],
    /// Largest entry of each row of X.
    row_max: &'a [f64],
    /// Largest entry of X within each chunk of `CHUNK_ROWS` rows.
    chunk_row_max: &'a [f64],
}

/// Adds `X' delta` to `out` for one column y of Y and its random effects u,
/// where `delta = max(max(y, 0) - X u, 0) - (y - X u)`. `chunk_min`
/// contains the lower bounds of y's chunks from [`DataSummary`].
///
/// delta is zero in a cell where y is non-negative and at least (X u)_p.
/// Since (X u)_p <= max_q X[p, q] * sum_q max(u_q, 0), only cells below
/// that bound (which include every negative cell) need (X u)_p at all, and
/// a chunk of rows whose smallest entry is at least the largest bound in
/// the chunk needs none. On data with few cells near zero that is a small
/// share, so the Theta-step costs about one product X'Y instead of two
/// (forming X U, then X'(Y - X U)).
///
/// Limitation: the check goes cell by cell through the flagged chunks. On
/// data with many zeros or small values spread over most columns (sparse
/// counts, for example) it can cost several times a product, so such fits
/// take longer per iteration than forming W for the whole block would.
fn correct_column(y: &[f64], chunk_min: &[f32], u: &[f64], bounds: &Bounds<'_>, out: &mut [f64]) {
    let q = u.len();
    let positive_sum: f64 = u.iter().map(|&v| positive(v)).sum();
    let chunks = y.chunks(CHUNK_ROWS).zip(chunk_min).zip(bounds.chunk_row_max).enumerate();
    for (chunk, ((values, &smallest), &largest_x)) in chunks {
        if f64::from(smallest) >= largest_x * positive_sum {
            continue;
        }
        let first_row = chunk * CHUNK_ROWS;
        for (row, (&value, &maximum)) in (first_row..).zip(values.iter().zip(&bounds.row_max[first_row..])) {
            if value >= maximum * positive_sum {
                continue;
            }
            let x_row = &bounds.x_rows[row * q..(row + 1) * q];
            let fitted: f64 = x_row.iter().zip(u).map(|(x, u)| x * u).sum();
            let delta = positive(positive(value) - fitted) - (value - fitted);
            if delta != 0.0 {
                out.iter_mut().zip(x_row).for_each(|(o, x)| *o += delta * x);
            }
        }
    }
}

/// Returns max(value, 0). Unlike `f64::max` it needs no NaN handling (a NaN
/// gives 0 either way), so that loops over it compile to plain comparisons.
#[inline]
fn positive(value: f64) -> f64 {
    if value > 0.0 {
        value
    } else {
        0.0
    }
}

/// Returns the transpose of `matrix`.
fn transposed(matrix: &Dense) -> Dense {
    let mut out = Dense::zeros(matrix.cols, matrix.rows);
    for j in 0..matrix.cols {
        for (i, &value) in matrix.col(j).iter().enumerate() {
            out.data[j + out.rows * i] = value;
        }
    }
    out
}

/// Rows of a column of Y per chunk in the tests of [`correct_column`].
const CHUNK_ROWS: usize = 8;

/// Facts about Y that every iteration uses, gathered once per fit.
struct DataSummary {
    /// ||Y||^2, for the residual sum of squares without a pass over Y.
    squared_norm: f64,
    /// Smallest entry of each column of Y.
    column_min: Vec<f64>,
    /// Lower bound on the entries of each chunk of `CHUNK_ROWS` rows of
    /// each column, column by column: the chunk's smallest entry rounded
    /// down to single precision, so that it takes a sixteenth of Y's size.
    chunk_min: Vec<f32>,
}

impl DataSummary {
    fn new(y: &[f64], p: usize) -> Self {
        let smallest = |values: &[f64]| values.iter().fold(f64::INFINITY, |low, &v| low.min(v));
        let column_min = y.chunks_exact(p).map(smallest).collect();
        let chunk_min = y
            .chunks_exact(p)
            .flat_map(|column| column.chunks(CHUNK_ROWS).map(|chunk| round_down_to_single(smallest(chunk))))
            .collect();
        DataSummary { squared_norm: sum_of_squares(y), column_min, chunk_min }
    }
}

/// Returns the largest single-precision value not above `value`.
fn round_down_to_single(value: f64) -> f32 {
    let rounded = value as f32;
    if f64::from(rounded) > value {
        rounded.next_down()
    } else {
        rounded
    }
}

/// Share of ||Y||^2 below which the residual sum of squares is computed by
/// a pass over Y instead of from the Gram identity.
const GRAM_RSS_MIN_SHARE: f64 = 1e-4;

/// Returns ||Y - X B||^2 for the scores B = Theta A + U, given `work.xty`
/// = X'Y, `work.gram` = X'X and `work.fixed` = Theta A for the same X and
/// Theta, and `y_squared_norm` = ||Y||^2; sets `work.scratch` to B.
///
/// The Gram identity ||Y||^2 - 2 <X'Y, B> + <X'X, B B'> needs no pass over
/// Y, but subtracts terms of size ||Y||^2 and so loses about log10(||Y||^2
/// / RSS) digits. Below `GRAM_RSS_MIN_SHARE` of ||Y||^2, where more than
/// four digits would be lost and rounding could approach the relative
/// change that the stopping rule compares with epsilon, Y is read again.
fn residual_sum_of_squares(
    y: &[f64],
    y_squared_norm: f64,
    x: &Dense,
    u: &Dense,
    work: &mut Workspace,
    threads: usize,
) -> f64 {
    let q = x.cols;
    for ((s, f), u) in work.scratch.data.iter_mut().zip(&work.fixed.data).zip(&u.data) {
        *s = f + u;
    }
    let mut scores_outer = Dense::zeros(q, q);
    gemm(&mut scores_outer, &work.scratch, false, &work.scratch, true, 1.0, false, Par::Seq);
    let cross = dot(&work.xty.data, &work.scratch.data);
    let from_gram = y_squared_norm - 2.0 * cross + dot(&work.gram.data, &scores_outer.data);
    if from_gram >= GRAM_RSS_MIN_SHARE * y_squared_norm {
        return from_gram;
    }
    residual_sum_of_squares_by_pass(y, x, &work.scratch, threads)
}

/// Returns ||Y - X scores||^2, reading Y once in cache-sized blocks.
fn residual_sum_of_squares_by_pass(y: &[f64], x: &Dense, scores: &Dense, threads: usize) -> f64 {

    let (p, q) = (x.rows, x.cols);
    let block = block_columns(p);
    let x_ref = x.as_ref();
    for_column_ranges(scores.cols, threads, 2 * p * q, |columns| {
        let mut r = vec![0.0; p * block];
        let mut sum = 0.0;
        let mut start = columns.start;
        while start < columns.end {
            let end = (start + block).min(columns.end);
            let width = end - start;
            let r_block = &mut r[..p * width];
            r_block.copy_from_slice(&y[start * p..end * p]);
            let r_mat = faer::MatMut::from_column_major_slice_mut(r_block, p, width);
            let s_block = MatRef::from_column_major_slice(&scores.data[start * q..end * q], q, width);
            matmul(r_mat, Accum::Add, x_ref, s_block, -1.0, Par::Seq);
            sum += sum_of_squares(r_block);
            start = end;
        }
        sum
    })
    .into_iter()
    .sum()
}

/// Splits two column-major buffers with `rows` rows and the same number of
/// columns into the same contiguous column ranges and runs `body` on each
/// range and its two slices, in parallel when the work is large.
fn for_column_pairs_mut(
    first: &mut [f64],
    second: &mut [f64],
    rows: usize,
    threads: usize,
    work_per_column: usize,
    body: impl Fn(std::ops::Range<usize>, &mut [f64], &mut [f64]) + Sync,
) {
    let columns = if rows == 0 { 0 } else { first.len() / rows };
    let ranges = column_chunks(columns, threads, work_per_column);
    let mut pieces = Vec::with_capacity(ranges.len());
    let (mut rest_first, mut rest_second) = (first, second);
    for range in &ranges {
        let (head_first, tail_first) = rest_first.split_at_mut(range.len() * rows);
        let (head_second, tail_second) = rest_second.split_at_mut(range.len() * rows);
        pieces.push((head_first, head_second));
        rest_first = tail_first;
        rest_second = tail_second;
    }
    if ranges.len() <= 1 {
        for (range, (a, b)) in ranges.into_iter().zip(pieces) {
            body(range, a, b);
        }
        return;
    }
    std::thread::scope(|scope| {
        let body = &body;
        let handles: Vec<_> =
            ranges.into_iter().zip(pieces).map(|(range, (a, b))| scope.spawn(move || body(range, a, b))).collect();
        for handle in handles {
            if let Err(payload) = handle.join() {
                std::panic::resume_unwind(payload);
            }
        }
    });
}

/// Record of when the cap raised lambda.
#[derive(Default)]
struct CapRecord {
    hits: usize,
    first: Option<usize>,
    last: Option<usize>,
}

/// Fits NMF-RE to `data`.
///
/// `interrupted` is polled once per iteration; when it returns true the fit
/// stops with `NmfreError::Interrupted`.
pub fn fit(data: &Data<'_>, options: &FitOptions, interrupted: &mut dyn FnMut() -> bool) -> Result<Fit> {
    validate_options(data, options)?;
    if options.nstart > 0 {
        return crate::multistart::fit_from_several_starts(data, options, interrupted);
    }
    let state = initial_state(data, &data.y_positive(), options)?;
    fit_from(data, options, state, interrupted)
}

/// Computes the values a fit starts from: the user's starting values where
/// `options.start` has them, otherwise NNDSVDar for X, ones for Theta and
/// zeros for U, normalised so that X's columns sum to 1. Every field of the
/// result is set.
///
/// Fits that share this start through [`fit_from_start`] match [`fit`] with
/// the same options and `nstart = 0` exactly, because the start is what
/// `fit` computes first.
pub fn start_values(data: &Data<'_>, options: &FitOptions) -> Result<StartValues> {
    validate_options(data, options)?;
    let state = initial_state(data, &data.y_positive(), options)?;
    Ok(StartValues { x: Some(state.x), theta: Some(state.theta), u: Some(state.u) })
}

/// Fits NMF-RE from starting values prepared by [`start_values`], which are
/// used as they are, without normalising them again. `options.start` and
/// `options.nstart` are ignored. All three of X, Theta and U must be set.
pub fn fit_from_start(
    data: &Data<'_>,
    options: &FitOptions,
    start: &StartValues,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<Fit> {
    validate_options(data, options)?;
    validate_start(data, options.rank, start)?;
    let (x, theta, u) = match (&start.x, &start.theta, &start.u) {
        (Some(x), Some(theta), Some(u)) => (x.clone(), theta.clone(), u.clone()),
        _ => {
            return Err(NmfreError::InvalidInput(
                "a prepared start needs X, Theta and U; compute it with start_values()".into(),
            ))
        }
    };
    let state = State { x, theta, u, sigma2: options.sigma2_start, tau2: options.tau2_start };
    fit_from(data, options, state, interrupted)
}

/// Runs the estimation loop from `state`; `options` must be validated.
pub(crate) fn fit_from(
    data: &Data<'_>,
    options: &FitOptions,
    mut state: State,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<Fit> {
    let (p, n, k, q) = (data.p, data.n, data.k, options.rank);
    let threads = options.threads.max(1);
    // The passes over Y split their columns across `threads` scoped
    // threads. The small products (Q x Q or Q x K by Q x N) stay on one
    // thread: faer's pool threads keep spinning after a product and on a
    // machine with few cores slow those passes down more than they gain.
    let par = Par::Seq;
    let y_positive = data.y_positive();
    let a = data.a_dense();
    let cap = options.cap.ceiling(n, q);

    let summary = DataSummary::new(data.y, p);
    let mut work = Workspace::new(p, n, q, k);
    outer_product_sum(&a, &a, &mut work.aat);
    fixed_scores(&state.theta, &a, &mut work.fixed, par);
    matmul(work.xty.as_mut(), Accum::Replace, state.x.as_ref().transpose(), data.y_ref(), 1.0, par);

    let mut record = CapRecord::default();
    let mut objective = Vec::new();
    let mut lambda = state.sigma2 / state.tau2;
    let mut eigenvalues = vec![0.0; q];
    let mut rss = f64::NAN;
    let mut stop_reason = StopReason::MaxIterations;
    let mut iterations = 0;
    let mut polishing = false;
    let mut paper_iterations = 0;
    let (mut kkt_x, mut kkt_theta, mut variance_change) = (f64::NAN, f64::NAN, 0.0);
    let mut x_before = state.x.clone();
    let mut theta_before = state.theta.clone();
    let mut jump = Jump::new(&state);

    for iteration in 1..=options.maxit {
        iterations = iteration;
        if interrupted() {
            return Err(NmfreError::Interrupted);
        }

        x_before.copy_from(&state.x);
        theta_before.copy_from(&state.theta);

        // U-step first: given X and Theta it has a closed form, and the
        // X- and Theta-steps below need the current random effects.
        cross_product(&state.x, &state.x, &mut work.gram);
        eigenvalues = symmetric_eigenvalues(&work.gram)?;
        lambda = state.sigma2 / state.tau2;
        if let (Some(cap), true) = (cap, polishing) {
            // While polishing, tau2 is the largest value up to its start
            // that keeps dfU within the cap. The multiplicative phase keeps
            // tau2 from the last iteration at which the cap raised lambda,
            // so its end point depends on the path. This rule gives a fixed
            // point of that phase whenever sigma2 no longer rises, and the
            // same one for every path.
            lambda = state.sigma2 / options.tau2_start;
            if effective_df(&eigenvalues, lambda, n) > cap {
                let tolerance = 1e-14 * lambda.max(1e-300);
                lambda = raise_lambda_to_cap_within(&eigenvalues, lambda, n, cap, tolerance).lambda;
            }
            state.tau2 = state.sigma2 / lambda;
        } else if let Some(cap) = cap {
            if effective_df(&eigenvalues, lambda, n) > cap {
                lambda = raise_lambda_to_cap(&eigenvalues, lambda, n, cap).lambda;
                state.tau2 = state.sigma2 / lambda;
                record.hits += 1;
                record.first.get_or_insert(iteration);
                record.last = Some(iteration);
            }
        }
        update_random_effects(&mut state, &mut work, lambda, par)?;

        // X-step: Lee-Seung update against the positive part of the scores.
        for ((b, f), u) in work.scratch.data.iter_mut().zip(&work.fixed.data).zip(&state.u.data) {
            *b = positive(f + u);
        }
        product_with_scores(&y_positive, &work.scratch, &mut work.ybt, threads);
        gemm(&mut work.bbt, &work.scratch, false, &work.scratch, true, 1.0, false, par);
        product(&state.x, &work.bbt, &mut work.x_denominator);
        for ((xv, num), den) in state.x.data.iter_mut().zip(&work.ybt.data).zip(&work.x_denominator.data) {
            *xv = (*xv * safe_divide(*num, *den, EPS)).max(EPS);
        }
        normalise(&mut state.x, &mut state.theta, &mut state.u);

        // Theta-step against the data with the random effects removed,
        // W = Y - X U: the non-negative update uses max(W, 0), the sign-free
        // one W itself.
        // X'(Y - X U) = X'Y - X'X U, so Y is read for X'Y only; X'Y also
        // serves the next U-step and the residual sum of squares.
        cross_product(&state.x, &state.x, &mut work.gram);
        let positive_part = options.theta_mode == ThetaMode::NonNegative;
        project_data(data.y, &summary, &state.x, &state.u, positive_part, &mut work, threads);
        for (value, xty) in work.scratch.data.iter_mut().zip(&work.xty.data) {
            *value += xty;
        }
        gemm(&mut work.scratch, &work.gram, false, &state.u, false, -1.0, true, par);
        match options.theta_mode {
            ThetaMode::NonNegative => {
                let mut numerator = Dense::zeros(q, k);
                product_transposed(&work.scratch, &a, &mut numerator);
                let denominator = theta_gradient_part(&work.gram, &state.theta, &work.aat);
                for ((t, num), den) in state.theta.data.iter_mut().zip(&numerator.data).zip(&denominator.data) {
                    *t = (*t * safe_divide(*num, *den, EPS)).max(EPS);
                }
            }
            ThetaMode::Free => {
                state.theta = free_theta(&work.scratch, &a, &work.gram, &work.aat)?;
            }
        }

        // X's bases are its columns, Theta's its rows.
        kkt_x = fixed_point_residual(&x_before, &state.x, true);
        kkt_theta = match options.theta_mode {
            ThetaMode::NonNegative => fixed_point_residual(&theta_before, &state.theta, false),
            ThetaMode::Free => largest_row_scaled_change(&theta_before, &state.theta),
        };

        // Residuals at the new parameters; Theta A also serves the next U-step.
        fixed_scores(&state.theta, &a, &mut work.fixed, par);
        rss = residual_sum_of_squares(data.y, summary.squared_norm, &state.x, &state.u, &mut work, threads);

        // Variance components: sigma2 on a slow schedule, tau2 only without
        // the cap. Polishing either keeps them, so that the fit is the
        // stationary point at the variances the damped schedule reached, or
        // (with `polish_variances`) moves them straight to their fixed points
        // sigma2 = mean(R^2) and the tau2 target.
        let freeze = polishing && !options.polish_variances;
        if freeze {
            variance_change = 0.0;
        }
        let damping_sigma2 = if polishing { 1.0 } else { 0.05 };
        let damping_tau2 = if polishing { 1.0 } else { 0.2 };
        // Polishing updates sigma2 even before `sigma2_update_from`, because
        // a fit that converged early would otherwise keep sigma2_start.
        let sigma2_due = !freeze
            && (polishing
                || iteration >= options.sigma2_update_from && iteration % options.sigma2_update_every == 0);
        if sigma2_due {
            let mean_square = rss / (p * n) as f64;
            let updated = ((1.0 - damping_sigma2) * state.sigma2 + damping_sigma2 * mean_square)
                .clamp(VARIANCE_MIN, VARIANCE_MAX);
            variance_change = (updated - state.sigma2).abs() / state.sigma2;
            state.sigma2 = updated;
        }
        if !freeze && cap.is_none() && options.update_tau2 {
            let trace_inverse: f64 = eigenvalues.iter().map(|d| 1.0 / (d.max(0.0) + lambda)).sum();
            let target = state.u.squared_norm() / (n * q) as f64 + state.sigma2 * trace_inverse / q as f64;
            let updated =
                ((1.0 - damping_tau2) * state.tau2 + damping_tau2 * target).clamp(VARIANCE_MIN, VARIANCE_MAX);
            let change = (updated - state.tau2).abs() / state.tau2;
            variance_change = if sigma2_due { variance_change.max(change) } else { change };
            state.tau2 = updated;
        }
        lambda = state.sigma2 / state.tau2;

        let value = rss + lambda * state.u.squared_norm();
        if !value.is_finite() {
            return Err(NmfreError::Numerical(format!(
                "the objective became non-finite at iteration {iteration}; \
                 check Y for extreme values or rescale it"
            )));
        }
        let previous = objective.last().copied();
        objective.push(value);
        let Some(previous) = previous else { continue };
        let small_change = (previous - value).abs() / (previous.abs() + EPS) < options.epsilon;
        if !polishing {
            if small_change {
                paper_iterations = iteration;
                if !options.polish {
                    stop_reason = StopReason::Converged;
                    break;
                }
                polishing = true;
            }
        } else {
            let stationary = kkt_x < options.kkt_tolerance
                && kkt_theta < options.kkt_tolerance
                && variance_change < options.kkt_tolerance;
            if small_change && stationary {
                stop_reason = StopReason::Certified;
                break;
            }
            if options.extrapolate {
                let moved = extrapolate(&mut state, &mut jump, kkt_x.max(kkt_theta));
                if moved {
                    // The next U-step needs X'Y and Theta A for the new X and Theta.
                    normalise(&mut state.x, &mut state.theta, &mut state.u);
                    matmul(work.xty.as_mut(), Accum::Replace, state.x.as_ref().transpose(), data.y_ref(), 1.0, par);
                    fixed_scores(&state.theta, &a, &mut work.fixed, par);
                }
            }
        }
    }
    if paper_iterations == 0 {
        paper_iterations = iterations;
    }

    order_bases(&mut state);
    cross_product(&state.x, &state.x, &mut work.gram);
    eigenvalues = symmetric_eigenvalues(&work.gram).unwrap_or(eigenvalues);
    // NOTE: the cap sets lambda before the last X-step, so dfU at the final
    // X can exceed the cap by about as much as X still moved (1e-8 relative
    // on converged fits, more on fits stopped at maxit).
    let dfu = effective_df(&eigenvalues, lambda, n);

    Ok(Fit {
        x: state.x,
        theta: state.theta,
        u: state.u,
        sigma2: state.sigma2,
        tau2: state.tau2,
        lambda,
        dfu,
        cap,
        cap_hits: record.hits,
        cap_first_hit: record.first,
        cap_last_hit: record.last,
        iterations,
        stop_reason,
        rss,
        objective,
        paper_iterations,
        kkt_x,
        kkt_theta,
        variance_change,
        starts: Vec::new(),
        best_start: 0,
    })
}

/// The extrapolation state of the polishing phase: the proposer, and the
/// iterate a pending proposal replaced with the residual it has to beat.
struct Jump {
    extrapolation: Extrapolation,
    /// Iterations run since the last proposal, while it awaits judgement.
    pending: Option<usize>,
    x: Dense,
    theta: Dense,
    residual: f64,
}

/// Iterations a proposal gets to lower the residual. The first one still
/// carries the fast components that the jump excites, and those often
/// decay within one more iteration.
const SETTLING_ITERATIONS: usize = 2;

impl Jump {
    fn new(state: &State) -> Self {
        Jump {
            extrapolation: Extrapolation::new(),
            pending: None,
            x: state.x.clone(),
            theta: state.theta.clone(),
            residual: f64::INFINITY,
        }
    }
}

/// Judges the last proposal by the fixed-point residuals of the first two
/// iterations run from it. When neither fell below the residual before the
/// jump, goes back to the iterate the jump replaced. Then proposes the next
/// jump once three iterates are recorded.
///
/// Returns whether X and Theta were replaced, in which case X'Y and Theta A
/// must be recomputed.
fn extrapolate(state: &mut State, jump: &mut Jump, residual: f64) -> bool {
    if let Some(run) = jump.pending {
        let accepted = residual < jump.residual;
        if !accepted && run + 1 < SETTLING_ITERATIONS {
            jump.pending = Some(run + 1);
            return false;
        }
        jump.pending = None;
        jump.extrapolation.judge(accepted);
        if !accepted {
            state.x.copy_from(&jump.x);
            state.theta.copy_from(&jump.theta);
            jump.extrapolation.restart();
            return true;
        }
    }
    jump.extrapolation.record(&state.x, &state.theta);
    jump.x.copy_from(&state.x);
    jump.theta.copy_from(&state.theta);
    if jump.extrapolation.propose(&mut state.x, &mut state.theta, EPS) {
        jump.pending = Some(0);
        jump.residual = residual;
        return true;
    }
    false
}

/// Sets U to the ridge solution `(X'X + lambda I)^{-1} X'(Y - X Theta A)`
/// with one Cholesky factorisation, then centres its rows. Needs
/// `work.gram` = X'X, `work.xty` = X'Y and `work.fixed` = Theta A for the
/// current X and Theta.
fn update_random_effects(state: &mut State, work: &mut Workspace, lambda: f64, par: Par) -> Result<()> {
    let q = state.x.cols;
    let mut ridge = work.gram.clone();
    for i in 0..q {
        ridge.data[i + q * i] += lambda;
    }
    // With the Q x Q inverse M^-1 of the ridge matrix, U = M^-1 X'Y -
    // (M^-1 X'X) Theta A: two small products, which cost less than
    // triangular solves column by column.
    let inverse = Cholesky::new(&ridge, "X'X + lambda I")?.inverse();
    let mut inverse_gram = Dense::zeros(q, q);
    product(&inverse, &work.gram, &mut inverse_gram);
    gemm(&mut state.u, &inverse, false, &work.xty, false, 1.0, false, par);
    gemm(&mut state.u, &inverse_gram, false, &work.fixed, false, -1.0, true, par);
    centre_rows(&mut state.u);
    Ok(())
}

/// Returns `gram * theta * aat`, the Theta-dependent part of the gradient.
fn theta_gradient_part(gram: &Dense, theta: &Dense, aat: &Dense) -> Dense {
    let mut gram_theta = Dense::zeros(theta.rows, theta.cols);
    product(gram, theta, &mut gram_theta);
    let mut out = Dense::zeros(theta.rows, theta.cols);
    product(&gram_theta, aat, &mut out);
    out
}

/// Returns the fixed-point residual of a non-negative block (entries at or
/// above the floor EPS) over one iteration. It is the larger of two parts:
/// the largest relative growth `after / before - 1` of an entry, and the
/// largest fall `before - after` relative to the largest entry of the
/// entry's basis.
///
/// For a multiplicative update this is the projected gradient in its scaled
/// form. A gradient that pulls an entry up counts in full, also on the
/// floor, where such an entry creeps up slowly. A gradient that pushes an
/// entry down counts in proportion to the entry, so an entry sinking towards
/// the floor stops counting once it is negligible against its basis. The
/// residual does not depend on the units of Y and is zero exactly at a fixed
/// point of the updates. The bases are the columns of X and the rows of
/// Theta, as `bases_are_columns` says.
fn fixed_point_residual(before: &Dense, after: &Dense, bases_are_columns: bool) -> f64 {
    // Basis b's entries start at `first * b` and lie `step` apart.
    let (bases, count, first, step) = if bases_are_columns {
        (before.cols, before.rows, before.rows, 1)
    } else {
        (before.rows, before.cols, 1, before.rows)
    };
    let mut largest: f64 = 0.0;
    for basis in 0..bases {
        let entries = (0..count).map(|k| first * basis + step * k);
        let scale = entries.clone().map(|i| before.data[i]).fold(0.0, f64::max);
        for i in entries {
            let (b, a) = (before.data[i], after.data[i]);
            let change = if a > b { a / b - 1.0 } else { (b - a) / scale };
            largest = largest.max(change);
        }
    }
    largest
}

/// Returns the largest change of an entry of a sign-free Theta relative to
/// the largest absolute entry of its row, so that entries near zero do not
/// dominate.
fn largest_row_scaled_change(before: &Dense, after: &Dense) -> f64 {
    let mut largest: f64 = 0.0;
    for row in 0..before.rows {
        let scale = (0..before.cols).map(|k| before.get(row, k).abs()).fold(0.0, f64::max);
        if scale == 0.0 {
            continue;
        }
        for k in 0..before.cols {
            largest = largest.max((after.get(row, k) - before.get(row, k)).abs() / scale);
        }
    }
    largest
}

/// Centres each row of U to mean 0 across units, so that the random effects
/// do not absorb an intercept that belongs in Theta.
fn centre_rows(u: &mut Dense) {
    let (q, n) = (u.rows, u.cols);
    // Summing eight columns at a time gives 8 q independent chains of
    // additions instead of q long ones, which would wait on each other.
    let width = 8 * q;
    let mut sums = vec![0.0; width];
    for group in u.data.chunks(width) {
        sums.iter_mut().zip(group).for_each(|(sum, value)| *sum += value);
    }
    let means: Vec<f64> = (0..q).map(|row| sums[row..].iter().step_by(q).sum::<f64>() / n as f64).collect();
    let pattern: Vec<f64> = means.iter().cycle().take(width).copied().collect();
    for group in u.data.chunks_mut(width) {
        group.iter_mut().zip(&pattern).for_each(|(value, mean)| *value -= mean);
    }
}

/// Computes `out = left * right'` for `left` (q x n) and `right` (k x n).
fn product_transposed(left: &Dense, right: &Dense, out: &mut Dense) {
    gemm(out, left, false, right, true, 1.0, false, Par::Seq);
}

/// Exact least squares `Theta = (X'X)^{-1} X'(Y - XU) A' (AA')^{-1}`, given
/// `xtw = X'(Y - XU)`.
fn free_theta(xtw: &Dense, a: &Dense, gram: &Dense, aat: &Dense) -> Result<Dense> {
    let (q, k) = (xtw.rows, a.rows);
    let mut middle = Dense::zeros(q, k);
    product_transposed(xtw, a, &mut middle);
    Cholesky::new(gram, "X'X")?.solve_columns(&mut middle);
    // Right-multiply by (AA')^{-1}: solve AA' Theta' = middle'.
    let mut transposed = Dense::zeros(k, q);
    for i in 0..q {
        for kk in 0..k {
            transposed.set(kk, i, middle.get(i, kk));
        }
    }
    Cholesky::new(aat, "A A' (the covariates are collinear)")?.solve_columns(&mut transposed);
    let mut theta = Dense::zeros(q, k);
    for i in 0..q {
        for kk in 0..k {
            theta.set(i, kk, transposed.get(kk, i));
        }
    }
    Ok(theta)
}

/// Orders the bases by `sum_p (p / P) X[p, q]`, ascending, so that bases
/// loading on later rows come last; Theta's and U's rows follow.
fn order_bases(state: &mut State) {
    let (p, q) = (state.x.rows, state.x.cols);
    let centre: Vec<f64> = (0..q)
        .map(|qq| state.x.col(qq).iter().enumerate().map(|(i, v)| (i + 1) as f64 / p as f64 * v).sum())
        .collect();
    let mut order: Vec<usize> = (0..q).collect();
    order.sort_by(|&i, &j| centre[i].total_cmp(&centre[j]));
    if order.iter().enumerate().all(|(i, &o)| i == o) {
        return;
    }
    let x = state.x.clone();
    let theta = state.theta.clone();
    let u = state.u.clone();
    for (new, &old) in order.iter().enumerate() {
        for i in 0..p {
            state.x.set(i, new, x.get(i, old));
        }
        for kk in 0..theta.cols {
            state.theta.set(new, kk, theta.get(old, kk));
        }
        for j in 0..u.cols {
            state.u.set(new, j, u.get(old, j));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a small non-negative data set from a known rank-2 structure
    /// plus a deterministic perturbation.
    fn example(p: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut y = Vec::with_capacity(p * n);
        for j in 0..n {
            for i in 0..p {
                let early = (p - i) as f64 / p as f64;
                let late = (i + 1) as f64 / p as f64;
                let noise = ((i * 31 + j * 17) % 7) as f64 / 7.0;
                y.push(10.0 * early + (5.0 + (j % 3) as f64) * late + noise);
            }
        }
        let a = (0..n).flat_map(|j| [1.0, (j % 2) as f64]).collect();
        (y, a)
    }

    fn workspace(p: usize, n: usize, q: usize, k: usize) -> Workspace {
        Workspace::new(p, n, q, k)
    }

    #[test]
    fn u_step_solves_its_normal_equations() {
        let (p, n, q, k) = (5, 12, 2, 2);
        let (y, a_values) = example(p, n);
        let a = Dense::from_vec(k, n, a_values);
        let x = Dense::from_vec(p, q, (0..p * q).map(|i| 0.1 + (i % 4) as f64 * 0.05).collect());
        let theta = Dense::from_vec(q, k, vec![20.0, 15.0, 1.0, 2.0]);
        let mut state = State { x, theta, u: Dense::zeros(q, n), sigma2: 1.0, tau2: 1.0 };
        let mut work = workspace(p, n, q, k);
        let y_dense = Dense::from_vec(p, n, y);
        cross_product(&state.x, &state.x, &mut work.gram);
        cross_product(&state.x, &y_dense, &mut work.xty);
        let lambda = 0.7;
        fixed_scores(&state.theta, &a, &mut work.fixed, Par::Seq);
        update_random_effects(&mut state, &mut work, lambda, Par::Seq).unwrap();

        // (X'X + lambda I) U_raw = X'(Y - X Theta A), and U is U_raw with its
        // row means removed, so (X'X + lambda I) U equals the right-hand side
        // minus its own row means.
        let mut rhs = work.xty.clone();
        let mut gram_fixed = Dense::zeros(q, n);
        product(&work.gram, &work.fixed, &mut gram_fixed);
        for (r, g) in rhs.data.iter_mut().zip(&gram_fixed.data) {
            *r -= g;
        }
        let mut lhs = Dense::zeros(q, n);
        product(&work.gram, &state.u, &mut lhs);
        for (l, u) in lhs.data.iter_mut().zip(&state.u.data) {
            *l += lambda * u;
        }
        for row in 0..q {
            let mean = (0..n).map(|j| rhs.get(row, j)).sum::<f64>() / n as f64;
            for j in 0..n {
                let expected = rhs.get(row, j) - mean;
                assert!((lhs.get(row, j) - expected).abs() < 1e-10 * (1.0 + expected.abs()));
            }
            let u_mean = (0..n).map(|j| state.u.get(row, j)).sum::<f64>() / n as f64;
            assert!(u_mean.abs() < 1e-12);
        }
    }

    /// Returns Y - X B for column-major Y (p x n), X (p x q) and B (q x n).
    fn residuals(y: &[f64], x: &Dense, scores: &Dense) -> Dense {
        let mut fitted = Dense::zeros(x.rows, scores.cols);
        product(x, scores, &mut fitted);
        Dense::from_vec(x.rows, scores.cols, y.iter().zip(&fitted.data).map(|(y, f)| y - f).collect())
    }

    /// Returns a 19 x 600 problem (two full chunks of rows and a partial one)
    /// whose Y has zeros, small and negative cells, so that the positive-part
    /// correction is needed in some columns and chunks and not in others.
    fn projection_example() -> (Vec<f64>, Dense, Dense) {
        let (p, n, q) = (19, 600, 3);
        let y: Vec<f64> = (0..p * n)
            .map(|i| match i % 23 {
                0 => 0.0,
                5 => -0.3,
                _ => 0.05 + ((i * 37) % 101) as f64 / 20.0,
            })
            .collect();
        let x = Dense::from_vec(p, q, (0..p * q).map(|i| 0.05 + ((i * 7) % 5) as f64 / 10.0).collect());
        let u = Dense::from_vec(q, n, (0..q * n).map(|i| ((i * 13) % 17) as f64 / 4.0 - 2.0).collect());
        (y, x, u)
    }

    #[test]
    fn projection_matches_its_definition() {
        // X'Y and X'(max(max(Y, 0) - X U, 0) - (Y - X U)) written out cell by
        // cell. The pass skips cells by a bound, so it must agree with them.
        let (y, x, u) = projection_example();
        let (p, n, q) = (x.rows, u.cols, x.cols);
        let w = residuals(&y, &x, &u);
        let delta: Vec<f64> = y.iter().zip(&w.data).map(|(y, w)| (y.max(0.0) - (y - w)).max(0.0) - w).collect();
        let mut expected_xty = Dense::zeros(q, n);
        cross_product(&x, &Dense::from_vec(p, n, y.clone()), &mut expected_xty);
        let mut expected_correction = Dense::zeros(q, n);
        cross_product(&x, &Dense::from_vec(p, n, delta), &mut expected_correction);
        assert!(expected_correction.data.iter().any(|&v| v != 0.0));
        assert!(expected_correction.data.chunks_exact(q).any(|column| column.iter().all(|&v| v == 0.0)));

        let summary = DataSummary::new(&y, p);
        for threads in [1, 2] {
            let mut work = workspace(p, n, q, 1);
            project_data(&y, &summary, &x, &u, true, &mut work, threads);
            for (actual, expected) in [(&work.xty, &expected_xty), (&work.scratch, &expected_correction)] {
                for (a, e) in actual.data.iter().zip(&expected.data) {
                    assert!((a - e).abs() < 1e-12 * (1.0 + e.abs()), "{a} vs {e}");
                }
            }
            project_data(&y, &summary, &x, &u, false, &mut work, threads);
            assert!(work.scratch.data.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn residual_sum_of_squares_matches_direct_sum() {
        // Once with a large residual (the Gram identity) and once with Y
        // almost equal to X U (RSS below 1e-4 ||Y||^2, the pass over Y).
        let (y, x, u) = projection_example();
        let (p, n, q) = (x.rows, u.cols, x.cols);
        let mut nearly_fitted = residuals(&vec![0.0; p * n], &x, &u);
        nearly_fitted.data.iter_mut().enumerate().for_each(|(i, v)| *v = -*v + 1e-4 * ((i % 3) as f64 - 1.0));
        for y in [y, nearly_fitted.data] {
            let direct = residuals(&y, &x, &u).squared_norm();
            let mut work = workspace(p, n, q, 1);
            cross_product(&x, &x, &mut work.gram);
            cross_product(&x, &Dense::from_vec(p, n, y.clone()), &mut work.xty);
            let summary = DataSummary::new(&y, p);
            let rss = residual_sum_of_squares(&y, summary.squared_norm, &x, &u, &mut work, 1);
            assert!((rss - direct).abs() < 1e-12 * direct, "{rss} vs {direct}");
        }
    }

    #[test]
    fn product_with_scores_agrees_across_threads() {
        let (y, x, u) = projection_example();
        let (p, q) = (x.rows, x.cols);
        let mut expected = Dense::zeros(p, q);
        gemm(&mut expected, &Dense::from_vec(p, u.cols, y.clone()), false, &u, true, 1.0, false, Par::Seq);
        for threads in [1, 2, 3] {
            let mut out = Dense::zeros(p, q);
            product_with_scores(&y, &u, &mut out, threads);
            for (a, e) in out.data.iter().zip(&expected.data) {
                assert!((a - e).abs() < 1e-12 * (1.0 + e.abs()), "{a} vs {e}");
            }
        }
    }

    #[test]
    fn fixed_point_residual_weighs_growth_and_fall() {
        // One basis (column) of X with largest entry 0.5.
        let before = Dense { rows: 3, cols: 1, data: vec![0.5, 1e-6, EPS] };
        // Nothing moves: a fixed point.
        assert_eq!(fixed_point_residual(&before, &before, true), 0.0);
        // An entry on the floor that grows by 1% counts in full, although
        // its absolute change is 1e-12.
        let growing = Dense { rows: 3, cols: 1, data: vec![0.5, 1e-6, 1.01 * EPS] };
        assert!((fixed_point_residual(&before, &growing, true) - 0.01).abs() < 1e-9);
        // A small entry that sinks by 1% counts relative to the basis's
        // largest entry: 1e-8 / 0.5.
        let sinking = Dense { rows: 3, cols: 1, data: vec![0.5, 0.99e-6, EPS] };
        assert!((fixed_point_residual(&before, &sinking, true) - 2e-8).abs() < 1e-15);
    }

    #[test]
    fn normalisation_keeps_products() {
        let x0 = Dense::from_vec(3, 2, vec![1.0, 2.0, 3.0, 0.5, 0.5, 4.0]);
        let theta0 = Dense::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
        let u0 = Dense::from_vec(2, 3, vec![0.1, -0.2, 0.3, 0.0, -0.4, 0.2]);
        let (mut x, mut theta, mut u) = (x0.clone(), theta0.clone(), u0.clone());
        normalise(&mut x, &mut theta, &mut u);
        for q in 0..2 {
            assert!((x.col(q).iter().sum::<f64>() - 1.0).abs() < 1e-15);
        }
        let product_of = |x: &Dense, m: &Dense| {
            let mut out = Dense::zeros(x.rows, m.cols);
            product(x, m, &mut out);
            out
        };
        for (before, after) in [(product_of(&x0, &theta0), product_of(&x, &theta)), (product_of(&x0, &u0), product_of(&x, &u))] {
            for (b, a) in before.data.iter().zip(&after.data) {
                assert!((b - a).abs() < 1e-13 * (1.0 + b.abs()));
            }
        }
    }

    #[test]
    fn objective_does_not_increase_at_fixed_variances() {
        // With sigma2 and tau2 held (no cap, no tau2 update, sigma2 update
        // never due) each block update minimises or majorises the objective
        // in its block. Normalisation rescales U's rows and so changes the
        // penalty slightly; allow a relative rise of 1e-9 per iteration.
        let (p, n) = (6, 40);
        let (y, a) = example(p, n);
        let data = Data::new(&y, p, n, &a, 2).unwrap();
        let options = FitOptions {
            rank: 2,
            cap: CapRule::Off,
            update_tau2: false,
            sigma2_update_from: usize::MAX,
            maxit: 500,
            epsilon: 0.0,
            tau2_start: 5.0,
            ..FitOptions::default()
        };
        let result = fit(&data, &options, &mut || false).unwrap();
        let mut worst: f64 = 0.0;
        for pair in result.objective.windows(2) {
            worst = worst.max((pair[1] - pair[0]) / pair[0]);
        }
        assert!(worst < 1e-9, "objective rose by a relative {worst}");
    }

    #[test]
    fn same_seed_gives_bitwise_identical_fits() {
        let (p, n) = (6, 40);
        let (y, a) = example(p, n);
        let data = Data::new(&y, p, n, &a, 2).unwrap();
        let options = FitOptions { rank: 3, seed: 99, maxit: 300, ..FitOptions::default() };
        let first = fit(&data, &options, &mut || false).unwrap();
        let second = fit(&data, &options, &mut || false).unwrap();
        assert_eq!(first.x, second.x);
        assert_eq!(first.theta, second.theta);
        assert_eq!(first.u, second.u);
        assert_eq!(first.objective, second.objective);
    }

    #[test]
    fn threads_agree_to_rounding() {
        let (p, n) = (30, 4000);
        let (y, a) = example(p, n);
        let data = Data::new(&y, p, n, &a, 2).unwrap();
        let single = FitOptions { rank: 2, maxit: 50, ..FitOptions::default() };
        let multi = FitOptions { threads: 2, ..single.clone() };
        let one = fit(&data, &single, &mut || false).unwrap();
        let two = fit(&data, &multi, &mut || false).unwrap();
        for (a, b) in one.theta.data.iter().zip(&two.theta.data) {
            assert!((a - b).abs() <= 1e-10 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn interrupt_stops_the_loop() {
        let (p, n) = (6, 40);
        let (y, a) = example(p, n);
        let data = Data::new(&y, p, n, &a, 2).unwrap();
        let mut calls = 0;
        let result = fit(&data, &FitOptions::default(), &mut || {
            calls += 1;
            calls > 3
        });
        assert_eq!(result.unwrap_err(), NmfreError::Interrupted);
    }
}
