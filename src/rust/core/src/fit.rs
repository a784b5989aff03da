//! The NMF-RE estimation loop: ridge (BLUP) updates for U, multiplicative
//! non-negative updates for X and Theta, variance updates and the df cap.

use std::borrow::Cow;

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatRef, Par};

use crate::columns::{
    add_block_cross_product, add_scaled, add_scaled_positive, combine_rows, combine_rows_positive, for_row_blocks,
    lane_dot, mirror_upper, scale_in_place, transpose_into, transposed,
};
use crate::dense::{column_chunks, cross_product, dot, outer_product_sum, product, safe_divide, sum_of_squares, Dense};
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
///
/// The N x Q matrices hold one basis per column (the transposes of the
/// model's Q x N matrices), so that the kernels of [`crate::columns`] run
/// along the units.
struct Workspace {
    /// Y'X for the current X (N x Q).
    ytx: Dense,
    /// Scores B' = max(A'Theta' + U', 0) in the X-step; A'Theta' + U' when
    /// the residual sum of squares needs a pass over Y (N x Q).
    scores: Dense,
    /// A' (N x K).
    a_t: Dense,
    /// Y A' (P x K), for X'(Y - X U) A' without a pass over Y.
    ya: Dense,
    /// Upper bound on the entries of X u_n, unit by unit (N).
    bound: Vec<f64>,
    /// Row means of Y (P) and of A (K), for the centring of U.
    y_mean: Vec<f64>,
    a_mean: Vec<f64>,
    gram: Dense,
    ybt: Dense,
    bbt: Dense,
    x_denominator: Dense,
    aat: Dense,
    /// Theta' (K x Q).
    theta_t: Dense,
    /// U A' (Q x K), U U' (Q x Q) and <X'Y, U> for the current U.
    ua: Dense,
    uu: Dense,
    xty_u: f64,
    /// X'(Y A') (Q x K).
    xya: Dense,
    /// -Theta' (M^-1 X'X)' (K x Q), the coefficients of A' in U'.
    fixed_coefficients: Dense,
    /// X'(max(max(Y, 0) - X U, 0) - (Y - X U)) A' (Q x K).
    correction: Dense,
    /// X'(Y - X U) A' plus `correction` (Q x K).
    numerator: Dense,
    theta_denominator: Dense,
    /// X' (Q x P) and the largest entry of each row of X, for the checks of
    /// the positive part.
    x_rows: Dense,
    row_max: Vec<f64>,
    /// One set per thread of [`project_data`].
    pass: Vec<PassBuffers>,
    /// The sum of their `by_row` copies (P x K).
    by_row_sum: Dense,
    /// Y' (N x P), kept when Y is small (see `SMALL_DATA_CELLS`), and the
    /// buffers of [`project_data`] on that path.
    y_t: Option<Dense>,
    pass_small: Option<PassBuffers>,
    moments: Moments,
    /// Column sums of X that the last normalisation divided by (Q).
    scales: Vec<f64>,
    solve: RidgeSolve,
    /// P x Q and Q x Q temporaries of [`gram_route_product`].
    route_buffers: [Dense; 3],
    route_complement: Dense,
    /// Q x K and Q x Q temporaries of the Theta-step and the residual sum
    /// of squares.
    gram_ua: Dense,
    gram_theta: Dense,
    scores_outer: Dense,
}

/// Buffers of [`unit_moments_from_gram`].
struct Moments {
    /// Y Y' X (P x Q).
    gx: Dense,
    /// Y Z = [Y Y' X, Y A', Y 1] (P x (Q + K + 1)).
    yz: Dense,
    /// X' Y Z (Q x (Q + K + 1)).
    xyz: Dense,
    /// Z'Z ((Q + K + 1) x (Q + K + 1)).
    ztz: Dense,
    /// The U-step's coefficients C, with U' = Z C ((Q + K + 1) x Q).
    c: Dense,
    ztz_c: Dense,
    /// Y U' (P x Q).
    yu: Dense,
}

impl Moments {
    fn new(p: usize, q: usize, k: usize) -> Self {
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
const SMALL_DATA_CELLS: usize = 1 << 16;

/// Copies of the row sums in [`PassBuffers`]: consecutive units add to
/// different copies, so that additions to the same row do not wait on each
/// other.
const BY_ROW_COPIES: usize = 4;

/// Buffers of one thread's share of [`project_data`].
struct PassBuffers {
    /// X'Y for a block of units (Q x block).
    xty: Vec<f64>,
    /// This share's sums of delta_pn a_n' over its units (P x K), one for
    /// each of `BY_ROW_COPIES` residues of n, which X' turns into its part
    /// of `Workspace::correction`.
    by_row: Dense,
    u_column: Vec<f64>,
}

impl PassBuffers {
    fn new(p: usize, q: usize, k: usize, block: usize) -> Self {
        PassBuffers { xty: vec![0.0; q * block], by_row: Dense::zeros(p, BY_ROW_COPIES * k), u_column: vec![0.0; q] }
    }
}

impl Workspace {
    fn new(data: &Data<'_>, q: usize) -> Self {
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
fn row_means(values: &[f64], rows: usize) -> Vec<f64> {
    let mut sums = vec![0.0; rows];
    for column in values.chunks_exact(rows.max(1)) {
        sums.iter_mut().zip(column).for_each(|(s, v)| *s += v);
    }
    let columns = (values.len() / rows.max(1)).max(1) as f64;
    sums.iter_mut().for_each(|s| *s /= columns);
    sums
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

/// Runs `body` on contiguous column ranges, each with its own input from
/// `inputs` (one per range of `ranges`), in parallel when there are several
/// ranges. Returns the per-range results in order, so that reductions are
/// deterministic for a given thread count.
fn for_ranges_with<S: Send, T: Send>(
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

/// Runs `body` on contiguous column ranges, in parallel when the work is
/// large, and returns the per-range results in order.
fn for_column_ranges<T: Send>(
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
fn product_with_scores(y: &[f64], scores_t: &Dense, out: &mut Dense, threads: usize) {
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
fn scores_from_parameters(u_t: &Dense, work: &mut Workspace) {
    let n = u_t.rows;
    for q in 0..u_t.cols {
        let terms = [(&work.a_t.data[..], work.theta_t.col(q)), (&u_t.data[q * n..], &[1.0][..])];
        combine_rows(&mut work.scores.data[q * n..(q + 1) * n], n, &terms, 0.0, 0..n);
    }
}

/// Number of columns of Y processed at a time in the fused passes, chosen so
/// that a P x block buffer (about 256 KiB) stays in cache.
fn block_columns(p: usize) -> usize {
    (32_768 / p.max(1)).clamp(16, 512)
}

/// Fixed products of max(Y, 0) that give the X-step's numerator max(Y, 0) B'
/// without a pass over Y, while few scores are negative.
///
/// With U = (Y'X M^-1 - A'Theta' X'X M^-1 - 1 m')' (m the row means that the
/// U-step removes, M symmetric), max(Y, 0) (Theta A + U)' is
/// `G X M^-1 + Y+A' Theta' (I - X'X M^-1) - (Y+ 1) m'` with G = max(Y, 0) Y'.
/// The scores' positive part then subtracts `max(Y, 0)_n s` for each
/// negative score s of unit n.
struct GramRoute {
    /// max(Y, 0) Y' (P x P).
    g: Dense,
    /// Y Y' (P x P) when Y has negative entries; otherwise it equals `g`.
    g_raw: Option<Dense>,
    /// max(Y, 0) A' (P x K).
    ypa: Dense,
    /// Row sums of max(Y, 0) (P x 1).
    ypsum: Dense,
}

impl GramRoute {
    /// Returns the route when it pays: G costs P^2 N once, and saves P N Q
    /// per iteration for P^2 Q, so it is formed when P <= 100 Q (it pays
    /// within about fifty iterations) and takes at most a quarter of Y's
    /// memory. `y_positive` must be `data.y_positive()`, which borrows Y
    /// itself when Y has no negative entry.
    fn for_data(data: &Data<'_>, y_positive: &[f64], q: usize, a: &Dense, threads: usize) -> Option<Self> {
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
fn symmetric_gram(y: MatRef<'_, f64>, threads: usize) -> Dense {
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
const GRAM_ROUTE_MAX_NEGATIVE_SHARE: f64 = 0.125;

/// The U-step's solve, kept for the Gram route of the X-step.
struct RidgeSolve {
    /// M = X'X + lambda I.
    ridge: Dense,
    inverse: Dense,
    /// M^-1 X'X.
    inverse_gram: Dense,
    /// M^-1, transposed for the N x Q layout.
    inverse_t: Dense,
    /// -(M^-1 X'X)' (Q x Q).
    inverse_gram_t: Dense,
    /// Row means of U removed by the centring (1 x Q), and their negatives.
    means: Dense,
    offsets: Vec<f64>,
}

impl RidgeSolve {
    fn new(q: usize) -> Self {
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

/// Sets `work.ybt = max(Y, 0) B'` from the Gram route (see [`GramRoute`]),
/// for the scores B = max(Theta A + U, 0) of `work.scores`, which
/// [`random_effects_and_scores`] set with `negative` negative entries. X and Theta are
/// those of the U-step that left `work.solve`, and [`unit_moments_from_gram`]
/// must have run for them. Returns false, leaving `work.ybt` unset, when
/// there are too many negative scores.
fn gram_route_product(
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

/// Sets U' (`u_t`) from the U-step's solve in `work.solve` (see
/// [`update_random_effects`]), `work.scores = max(A'Theta' + U', 0)` and
/// `work.bbt` = B B' for these scores B, a block of units at a time, and
/// returns how many scores are negative.
fn random_effects_and_scores(u_t: &mut Dense, work: &mut Workspace, threads: usize) -> usize {
    let (n, q, k) = (u_t.rows, u_t.cols, work.a_t.cols);
    // Each range of units gets its rows of every column of U' and of the
    // scores, and returns its negative count and its part of B B'.
    let ranges = column_chunks(n, threads, 4 * q * (q + k + 1));
    let mut inputs: Vec<(Vec<&mut [f64]>, Vec<&mut [f64]>)> =
        ranges.iter().map(|_| (Vec::with_capacity(q), Vec::with_capacity(q))).collect();
    for (u_column, score_column) in u_t.data.chunks_exact_mut(n).zip(work.scores.data.chunks_exact_mut(n)) {
        let (mut u_rest, mut score_rest) = (u_column, score_column);
        for (range, (u_parts, score_parts)) in ranges.iter().zip(inputs.iter_mut()) {
            let (u_head, u_tail) = u_rest.split_at_mut(range.len());
            let (score_head, score_tail) = score_rest.split_at_mut(range.len());
            u_parts.push(u_head);
            score_parts.push(score_head);
            (u_rest, score_rest) = (u_tail, score_tail);
        }
    }
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
            for j in 0..q {
                for i in 0..=j {
                    bbt.data[i + q * j] += lane_dot(&score_parts[i][rows.clone()], &score_parts[j][rows.clone()]);
                }
            }
        });
        (negative, bbt)
    });
    work.bbt.data.iter_mut().for_each(|v| *v = 0.0);
    let mut negative = 0;
    for (count, bbt) in parts {
        negative += count;
        work.bbt.data.iter_mut().zip(&bbt.data).for_each(|(o, v)| *o += v);
    }
    mirror_upper(&mut work.bbt);
    negative
}

/// Sets `work.uu = U U'`, `work.ua = U A'` and `work.yu = Y U'` for the U
/// that [`random_effects_and_scores`] just formed from `x` (the X of the
/// U-step), without a pass over the units.
///
/// U' = Z C for Z = [Y'X, A', 1] (N x (Q + K + 1)) and C the U-step's
/// coefficients, so U U' = C' (Z'Z) C, U A' = C' Z'A' and Y U' = (Y Z) C.
/// Z'Z is assembled from X'(Y Y')X, X'(Y A'), A A' and the row sums of Y
/// and A, all of them at most P x P.
fn unit_moments_from_gram(route: &GramRoute, x: &Dense, work: &mut Workspace) {
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
/// [`normalise_transposed`] multiplied them by `work.scales`, and sets
/// `work.xty_u = <X'Y, U> = <X, Y U'>` for the normalised X.
fn rescale_unit_moments(x: &Dense, work: &mut Workspace) {
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

/// Sets `work.ua = U A'`, `work.uu = U U'` and `work.xty_u = <X'Y, U>` in
/// one pass over the units.
fn unit_statistics(u_t: &Dense, work: &mut Workspace) {
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
fn project_data(
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
    let mut inputs: Vec<(Vec<&mut [f64]>, &mut PassBuffers)> =
        work.pass.iter_mut().take(ranges.len()).map(|buffers| (Vec::with_capacity(q), buffers)).collect();
    for column in work.ytx.data.chunks_exact_mut(n) {
        let mut rest = column;
        for (range, (outputs, _)) in ranges.iter().zip(inputs.iter_mut()) {
            let (head, tail) = rest.split_at_mut(range.len());
            outputs.push(head);
            rest = tail;
        }
    }
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
fn add_copies(by_row: &Dense, sum: &mut Dense) {
    for copy in by_row.data.chunks_exact(sum.data.len()) {
        sum.data.iter_mut().zip(copy).for_each(|(o, v)| *o += v);
    }
}

/// Inputs of [`UnitCheck::correct_units`]: the data, the random effects and
/// the bounds of this iteration.
struct UnitCheck<'a> {
    y: &'a [f64],
    summary: &'a DataSummary,
    u_t: &'a Dense,
    a: &'a Dense,
    /// Upper bound on the entries of X u_n, unit by unit.
    bound: &'a [f64],
    bounds: &'a Bounds<'a>,
}

impl UnitCheck<'_> {
    /// Adds to `by_row` (P x K) the rows `delta_n a_n'` of the
    /// positive-part correction from the units in `columns` (see
    /// [`correct_column`]). Units whose smallest entry of Y is at least the
    /// bound on X u_n contribute nothing, so they are skipped.
    fn correct_units(&self, columns: std::ops::Range<usize>, by_row: &mut Dense, u_column: &mut [f64]) {
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
struct Bounds<'a> {
    /// X's rows one after another.
    x_rows: &'a [f64],
    /// Largest entry of each row of X.
    row_max: &'a [f64],
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
fn correct_column(
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
fn positive(value: f64) -> f64 {
    if value > 0.0 {
        value
    } else {
        0.0
    }
}

/// Facts about Y that every iteration uses, gathered once per fit.
struct DataSummary {
    /// ||Y||^2, for the residual sum of squares without a pass over Y.
    squared_norm: f64,
    /// Smallest entry of each column of Y.
    column_min: Vec<f64>,
    /// Rows of the `listed` smallest entries of each column, in ascending
    /// order of value, column by column.
    smallest_rows: Vec<u32>,
    /// Rows listed per column: P / 8, at least 8 (or P), so that the list
    /// takes at most a sixteenth of Y's memory.
    listed: usize,
}

impl DataSummary {
    fn new(y: &[f64], p: usize) -> Self {
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

    fn smallest_rows(&self, column: usize) -> &[u32] {
        &self.smallest_rows[column * self.listed..(column + 1) * self.listed]
    }
}

/// Share of ||Y||^2 below which the residual sum of squares is computed by
/// a pass over Y instead of from the Gram identity.
const GRAM_RSS_MIN_SHARE: f64 = 1e-4;

/// Returns ||Y - X B||^2 for the scores B = Theta A + U, given `work.gram`
/// = X'X, `work.xya` = X'(Y A') and the statistics of [`unit_statistics`]
/// for the same X and U, and `y_squared_norm` = ||Y||^2.
///
/// The Gram identity ||Y||^2 - 2 <X'Y, B> + <X'X, B B'> needs no pass over
/// Y: <X'Y, B> = <X'(Y A'), Theta> + <X'Y, U> and B B' = Theta A A' Theta'
/// + Theta (U A')' + (U A') Theta' + U U'. It subtracts terms of size
/// ||Y||^2 and so loses about log10(||Y||^2 / RSS) digits. Below
/// `GRAM_RSS_MIN_SHARE` of ||Y||^2, where more than four digits would be
/// lost and rounding could approach the relative change that the stopping
/// rule compares with epsilon, Y is read again.
fn residual_sum_of_squares(
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
fn residual_sum_of_squares_by_pass(y: &[f64], x: &Dense, scores_t: &Dense, threads: usize) -> f64 {
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
    let (p, n, q) = (data.p, data.n, options.rank);
    let threads = options.threads.max(1);
    let y_positive = data.y_positive();
    let a = data.a_dense();
    let cap = options.cap.ceiling(n, q);

    let summary = DataSummary::new(data.y, p);
    let mut work = Workspace::new(data, q);
    let gram_route = GramRoute::for_data(data, &y_positive, q, &a, threads);
    // The loop keeps U as U' (N x Q), like the other N x Q matrices.
    let mut u_t = transposed(&state.u);
    // X'X and Y'X for the first U-step; the Theta-step keeps both current.
    cross_product(&state.x, &state.x, &mut work.gram);
    project_data(data.y, &summary, &state.x, &u_t, &a, false, &mut work, threads);

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
        transpose_into(&state.theta, &mut work.theta_t);
        update_random_effects(&state.x, &mut work, lambda)?;
        let negative = random_effects_and_scores(&mut u_t, &mut work, threads);
        // With the Gram route, U U', U A' and <X'Y, U> need no pass over the
        // units either.
        if let Some(route) = &gram_route {
            unit_moments_from_gram(route, &state.x, &mut work);
        }

        // X-step: Lee-Seung update against the positive part of the scores.
        // Its numerator max(Y, 0) B' comes from fixed Gram matrices while
        // few scores are negative, and from a pass over Y otherwise.
        let from_gram = gram_route.as_ref().is_some_and(|route| {
            gram_route_product(route, &y_positive, &state.x, &u_t, negative, &mut work)
        });
        if !from_gram {
            product_with_scores(&y_positive, &work.scores, &mut work.ybt, threads);
        }
        product(&state.x, &work.bbt, &mut work.x_denominator);
        for ((xv, num), den) in state.x.data.iter_mut().zip(&work.ybt.data).zip(&work.x_denominator.data) {
            *xv = (*xv * safe_divide(*num, *den, EPS)).max(EPS);
        }
        normalise_transposed(&mut state.x, &mut state.theta, &mut u_t, &mut work.scales);

        // Theta-step against the data with the random effects removed,
        // W = Y - X U: the non-negative update uses max(W, 0), the sign-free
        // one W itself.
        // X'(Y - X U) A' = X'(Y A') - X'X (U A'), so Y is read for Y'X only,
        // which serves the next U-step and the residual sum of squares; the
        // positive part is corrected on the few cells where W < 0.
        cross_product(&state.x, &state.x, &mut work.gram);
        let positive_part = options.theta_mode == ThetaMode::NonNegative;
        project_data(data.y, &summary, &state.x, &u_t, &a, positive_part, &mut work, threads);
        if gram_route.is_some() {
            rescale_unit_moments(&state.x, &mut work);
        } else {
            unit_statistics(&u_t, &mut work);
        }
        cross_product(&state.x, &work.ya, &mut work.xya);
        work.numerator.copy_from(&work.xya);
        product(&work.gram, &work.ua, &mut work.gram_ua);
        for ((value, g), c) in work.numerator.data.iter_mut().zip(&work.gram_ua.data).zip(&work.correction.data) {
            *value += c - g;
        }
        match options.theta_mode {
            ThetaMode::NonNegative => {
                product(&work.gram, &state.theta, &mut work.gram_theta);
                product(&work.gram_theta, &work.aat, &mut work.theta_denominator);
                let ratios = work.numerator.data.iter().zip(&work.theta_denominator.data);
                for (t, (num, den)) in state.theta.data.iter_mut().zip(ratios) {
                    *t = (*t * safe_divide(*num, *den, EPS)).max(EPS);
                }
            }
            ThetaMode::Free => {
                state.theta = free_theta(&work.numerator, &work.gram, &work.aat)?;
            }
        }

        // Residuals at the new parameters.
        rss = residual_sum_of_squares(data.y, summary.squared_norm, &state.x, &state.theta, &u_t, &mut work, threads);
        let u_squared_norm: f64 = (0..q).map(|i| work.uu.get(i, i).max(0.0)).sum();

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
            let target = u_squared_norm / (n * q) as f64 + state.sigma2 * trace_inverse / q as f64;
            let updated =
                ((1.0 - damping_tau2) * state.tau2 + damping_tau2 * target).clamp(VARIANCE_MIN, VARIANCE_MAX);
            let change = (updated - state.tau2).abs() / state.tau2;
            variance_change = if sigma2_due { variance_change.max(change) } else { change };
            state.tau2 = updated;
        }
        lambda = state.sigma2 / state.tau2;

        let value = rss + lambda * u_squared_norm;
        if !value.is_finite() {
            return Err(NmfreError::Numerical(format!(
                "the objective became non-finite at iteration {iteration}; \
                 check Y for extreme values or rescale it"
            )));
        }
        let previous = objective.last().copied();
        objective.push(value);
        let small_change =
            previous.is_some_and(|previous| (previous - value).abs() / (previous.abs() + EPS) < options.epsilon);
        // The fixed-point residuals serve the polishing phase and the
        // report of the last iteration, which may be this one.
        if polishing || small_change || iteration == options.maxit {
            // X's bases are its columns, Theta's its rows.
            kkt_x = fixed_point_residual(&x_before, &state.x, true);
            kkt_theta = match options.theta_mode {
                ThetaMode::NonNegative => fixed_point_residual(&theta_before, &state.theta, false),
                ThetaMode::Free => largest_row_scaled_change(&theta_before, &state.theta),
            };
        }
        if previous.is_none() {
            continue;
        }
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
                    // The next U-step needs X'X and Y'X for the new X.
                    normalise_transposed(&mut state.x, &mut state.theta, &mut u_t, &mut work.scales);
                    cross_product(&state.x, &state.x, &mut work.gram);
                    project_data(data.y, &summary, &state.x, &u_t, &a, false, &mut work, threads);
                }
            }
        }
    }
    state.u = transposed(&u_t);
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

/// Prepares the U-step: the ridge solution `U = (X'X + lambda I)^{-1}
/// X'(Y - X Theta A)`, with its rows centred, is U' = Y'X M^-1' -
/// A'Theta' (M^-1 X'X)' - 1 m' for M = X'X + lambda I and the row means m.
/// Sets in `work.solve` the inverse M^-1 (by one Cholesky factorisation),
/// (M^-1 X'X)' and -m, and in `work.fixed_coefficients` -Theta' (M^-1
/// X'X)', for [`random_effects_and_scores`]. Needs `work.gram` = X'X and
/// `work.theta_t` = Theta' for the current X and Theta.
fn update_random_effects(x: &Dense, work: &mut Workspace, lambda: f64) -> Result<()> {
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

/// Rescales X to unit column sums and moves the scale into Theta's rows and
/// the columns of U' (`u_t`), as [`normalise`] does for U; sets `scales`
/// to the factors (1 where a column sum is not positive).
fn normalise_transposed(x: &mut Dense, theta: &mut Dense, u_t: &mut Dense, scales: &mut [f64]) {
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

/// Exact least squares `Theta = (X'X)^{-1} X'(Y - XU) A' (AA')^{-1}`, given
/// `middle = X'(Y - XU) A'`.
fn free_theta(middle: &Dense, gram: &Dense, aat: &Dense) -> Result<Dense> {
    let (q, k) = (middle.rows, middle.cols);
    let mut middle = middle.clone();
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
    use crate::dense::gemm;

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

    fn workspace(y: &[f64], p: usize, n: usize, a: &[f64], q: usize) -> Workspace {
        let data = Data::new(y, p, n, a, a.len() / n).unwrap();
        Workspace::new(&data, q)
    }

    /// A U-step from X and Theta on `data`, as the loop runs it.
    struct UStep {
        work: Workspace,
        u_t: Dense,
        negative: usize,
    }

    /// Runs a U-step with ridge penalty `lambda` on `threads` threads.
    fn u_step(data: &Data<'_>, x: &Dense, theta: &Dense, lambda: f64, threads: usize) -> UStep {
        let mut work = Workspace::new(data, x.cols);
        cross_product(x, x, &mut work.gram);
        work.ytx = y_cross_x(data.y, data.p, x);
        transpose_into(theta, &mut work.theta_t);
        update_random_effects(x, &mut work, lambda).unwrap();
        let mut u_t = Dense::zeros(data.n, x.cols);
        let negative = random_effects_and_scores(&mut u_t, &mut work, threads);
        UStep { work, u_t, negative }
    }

    /// Returns X'Y as the loop keeps it: Y'X (N x Q).
    fn y_cross_x(y: &[f64], p: usize, x: &Dense) -> Dense {
        let mut xty = Dense::zeros(x.cols, y.len() / p);
        cross_product(x, &Dense::from_vec(p, y.len() / p, y.to_vec()), &mut xty);
        transposed(&xty)
    }

    #[test]
    fn u_step_solves_its_normal_equations() {
        let (p, n, q, k) = (5, 12, 2, 2);
        let (y, a_values) = example(p, n);
        let a = Dense::from_vec(k, n, a_values);
        let x = Dense::from_vec(p, q, (0..p * q).map(|i| 0.1 + (i % 4) as f64 * 0.05).collect());
        let theta = Dense::from_vec(q, k, vec![20.0, 15.0, 1.0, 2.0]);
        let lambda = 0.7;
        let data = Data::new(&y, p, n, &a.data, k).unwrap();
        let UStep { work, u_t, negative } = u_step(&data, &x, &theta, lambda, 1);
        let u = transposed(&u_t);
        let mut fixed = Dense::zeros(q, n);
        product(&theta, &a, &mut fixed);

        // (X'X + lambda I) U_raw = X'(Y - X Theta A), and U is U_raw with its
        // row means removed, so (X'X + lambda I) U equals the right-hand side
        // minus its own row means.
        let mut rhs = transposed(&work.ytx);
        let mut gram_fixed = Dense::zeros(q, n);
        product(&work.gram, &fixed, &mut gram_fixed);
        for (r, g) in rhs.data.iter_mut().zip(&gram_fixed.data) {
            *r -= g;
        }
        let mut lhs = Dense::zeros(q, n);
        product(&work.gram, &u, &mut lhs);
        for (l, u) in lhs.data.iter_mut().zip(&u.data) {
            *l += lambda * u;
        }
        for row in 0..q {
            let mean = (0..n).map(|j| rhs.get(row, j)).sum::<f64>() / n as f64;
            for j in 0..n {
                let expected = rhs.get(row, j) - mean;
                assert!((lhs.get(row, j) - expected).abs() < 1e-10 * (1.0 + expected.abs()));
            }
            let u_mean = (0..n).map(|j| u.get(row, j)).sum::<f64>() / n as f64;
            assert!(u_mean.abs() < 1e-12);
        }

        // The X-step's scores B = max(Theta A + U, 0) and B B' come from
        // the same pass.
        let scores: Vec<f64> = fixed.data.iter().zip(&u.data).map(|(f, u)| f + u).collect();
        assert_eq!(negative, scores.iter().filter(|&&s| s < 0.0).count());
        let b = Dense::from_vec(q, n, scores.iter().map(|s| s.max(0.0)).collect());
        let mut bbt = Dense::zeros(q, q);
        gemm(&mut bbt, &b, false, &b, true, 1.0, false, Par::Seq);
        for (actual, expected) in [(&transposed(&work.scores), &b), (&work.bbt, &bbt)] {
            for (a, e) in actual.data.iter().zip(&expected.data) {
                assert!((a - e).abs() < 1e-10 * (1.0 + e.abs()), "{a} vs {e}");
            }
        }
    }

    #[test]
    fn u_step_agrees_across_threads() {
        // 20000 units are enough work to split into three ranges. U' and
        // the scores are formed element by element, so they agree exactly;
        // B B' is summed by range, so it agrees to rounding.
        let (p, n, q, k) = (5, 20000, 2, 2);
        let (y, a_values) = example(p, n);
        let x = Dense::from_vec(p, q, (0..p * q).map(|i| 0.1 + (i % 4) as f64 * 0.05).collect());
        let theta = Dense::from_vec(q, k, vec![20.0, 15.0, -1.0, 2.0]);
        let data = Data::new(&y, p, n, &a_values, k).unwrap();
        let (one, three) = (u_step(&data, &x, &theta, 0.7, 1), u_step(&data, &x, &theta, 0.7, 3));
        assert_eq!(column_chunks(n, 3, 4 * q * (q + k + 1)).len(), 3);
        assert_eq!(one.u_t, three.u_t);
        assert_eq!(one.work.scores, three.work.scores);
        assert_eq!(one.negative, three.negative);
        for (a, b) in one.work.bbt.data.iter().zip(&three.work.bbt.data) {
            assert!((a - b).abs() < 1e-12 * a.abs(), "{a} vs {b}");
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

    /// Covariates for [`projection_example`]: an intercept and a trend.
    fn projection_covariates(n: usize) -> Dense {
        Dense::from_vec(2, n, (0..n).flat_map(|j| [1.0, (j % 10) as f64 / 10.0]).collect())
    }

    #[test]
    fn projection_matches_its_definition() {
        // X'Y and X'(max(max(Y, 0) - X U, 0) - (Y - X U)) A' written out
        // cell by cell. The pass skips cells by a bound, so it must agree
        // with them. The example has 2 cells in 23 at or below 0; a copy
        // with a zero in every fourth cell makes the lists of smallest rows
        // often end below the bound.
        let (y_example, x, u) = projection_example();
        let (p, n, q) = (x.rows, u.cols, x.cols);
        let a = projection_covariates(n);
        let y_zeros: Vec<f64> = y_example.iter().enumerate().map(|(i, &v)| if i % 4 == 1 { 0.0 } else { v }).collect();
        for y in [y_example, y_zeros] {
            let summary = DataSummary::new(&y, p);
            let w = residuals(&y, &x, &u);
            let delta: Vec<f64> = y.iter().zip(&w.data).map(|(y, w)| (y.max(0.0) - (y - w)).max(0.0) - w).collect();
            let expected_ytx = y_cross_x(&y, p, &x);
            let mut projected = Dense::zeros(q, n);
            cross_product(&x, &Dense::from_vec(p, n, delta), &mut projected);
            assert!(projected.data.iter().any(|&v| v != 0.0));
            assert!(projected.data.chunks_exact(q).any(|column| column.iter().all(|&v| v == 0.0)));
            let mut expected_correction = Dense::zeros(q, 2);
            gemm(&mut expected_correction, &projected, false, &a, true, 1.0, false, Par::Seq);

            let u_t = transposed(&u);
            // Y is small enough that Y'X comes from a copy of Y'; without
            // that copy, from products on one or two threads.
            for (threads, keep_transpose) in [(1, true), (1, false), (2, false)] {
                let mut work = workspace(&y, p, n, &a.data, q);
                assert!(work.y_t.is_some());
                if !keep_transpose {
                    work.y_t = None;
                }
                project_data(&y, &summary, &x, &u_t, &a, true, &mut work, threads);
                for (actual, expected) in [(&work.ytx, &expected_ytx), (&work.correction, &expected_correction)] {
                    for (a, e) in actual.data.iter().zip(&expected.data) {
                        assert!((a - e).abs() < 1e-12 * (1.0 + e.abs()), "{a} vs {e}");
                    }
                }
                project_data(&y, &summary, &x, &u_t, &a, false, &mut work, threads);
                assert!(work.correction.data.iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn residual_sum_of_squares_matches_direct_sum() {
        // Once with a large residual (the Gram identity) and once with Y
        // almost equal to X (Theta A + U) (RSS below 1e-4 ||Y||^2, the pass
        // over Y).
        let (y, x, u) = projection_example();
        let (p, n, q) = (x.rows, u.cols, x.cols);
        let a = projection_covariates(n);
        let theta = Dense::from_vec(q, 2, vec![0.4, 0.2, 0.1, 0.3, -0.2, 0.5]);
        let mut scores = Dense::zeros(q, n);
        product(&theta, &a, &mut scores);
        scores.data.iter_mut().zip(&u.data).for_each(|(s, u)| *s += u);
        let mut nearly_fitted = residuals(&vec![0.0; p * n], &x, &scores);
        nearly_fitted.data.iter_mut().enumerate().for_each(|(i, v)| *v = -*v + 1e-4 * ((i % 3) as f64 - 1.0));
        for y in [y, nearly_fitted.data] {
            let direct = residuals(&y, &x, &scores).squared_norm();
            let mut work = workspace(&y, p, n, &a.data, q);
            cross_product(&x, &x, &mut work.gram);
            work.ytx = y_cross_x(&y, p, &x);
            let u_t = transposed(&u);
            unit_statistics(&u_t, &mut work);
            cross_product(&x, &work.ya, &mut work.xya);
            let summary = DataSummary::new(&y, p);
            let rss = residual_sum_of_squares(&y, summary.squared_norm, &x, &theta, &u_t, &mut work, 1);
            assert!((rss - direct).abs() < 1e-12 * direct, "{rss} vs {direct}");
        }
    }

    #[test]
    fn gram_moments_match_unit_sums() {
        // U U', U A' and <X'Y, U> after a U-step and a normalisation that
        // rescales U's rows, from the Gram matrices and by inner products
        // over the units, on data with negative cells (Y Y' differs from
        // max(Y, 0) Y').
        let (y, x, _) = projection_example();
        let (p, n, q) = (x.rows, 600, x.cols);
        let a = projection_covariates(n);
        let data = Data::new(&y, p, n, &a.data, 2).unwrap();
        let y_positive = data.y_positive();
        let route = GramRoute::for_data(&data, &y_positive, q, &a, 1).expect("P = 19 is small enough");
        assert!(route.g_raw.is_some());
        let theta = Dense::from_vec(q, 2, vec![4.0, 3.0, 1.0, -0.5, 0.4, 0.1]);
        let UStep { mut work, mut u_t, .. } = u_step(&data, &x, &theta, 0.5, 1);
        unit_moments_from_gram(&route, &x, &mut work);

        // Rescale X's columns as the X-step's normalisation does.
        let mut x_new = x.clone();
        x_new.data.iter_mut().enumerate().for_each(|(i, v)| *v *= 1.5 + (i % 5) as f64 * 0.1);
        let mut theta_new = theta.clone();
        normalise_transposed(&mut x_new, &mut theta_new, &mut u_t, &mut work.scales);
        assert!(work.scales.iter().all(|&s| (s - 1.0).abs() > 0.1));
        work.ytx = y_cross_x(&y, p, &x_new);
        rescale_unit_moments(&x_new, &mut work);
        let (uu, ua, xty_u) = (work.uu.clone(), work.ua.clone(), work.xty_u);

        unit_statistics(&u_t, &mut work);
        for (actual, expected) in [(&uu, &work.uu), (&ua, &work.ua)] {
            let scale = expected.data.iter().fold(0.0f64, |high, v| high.max(v.abs()));
            for (a, e) in actual.data.iter().zip(&expected.data) {
                assert!((a - e).abs() < 1e-11 * scale, "{a} vs {e}");
            }
        }
        assert!((xty_u - work.xty_u).abs() < 1e-11 * work.xty_u.abs(), "{xty_u} vs {}", work.xty_u);
    }

    #[test]
    fn product_with_scores_agrees_across_threads() {
        let (y, x, u) = projection_example();
        let (p, q) = (x.rows, x.cols);
        let mut expected = Dense::zeros(p, q);
        gemm(&mut expected, &Dense::from_vec(p, u.cols, y.clone()), false, &u, true, 1.0, false, Par::Seq);
        for threads in [1, 2, 3] {
            let mut out = Dense::zeros(p, q);
            product_with_scores(&y, &transposed(&u), &mut out, threads);
            for (a, e) in out.data.iter().zip(&expected.data) {
                assert!((a - e).abs() < 1e-12 * (1.0 + e.abs()), "{a} vs {e}");
            }
        }
    }

    #[test]
    fn gram_route_matches_the_pass_over_y() {
        // max(Y, 0) B' for B = max(Theta A + U, 0) after a U-step, from the
        // fixed Gram matrices and from a pass over Y, with scores of both
        // signs: once on data with negative cells, once on |Y|, where G X is
        // shared with the moments.
        let (y_signed, x, _) = projection_example();
        let (p, n, q) = (x.rows, 600, x.cols);
        let a = projection_covariates(n);
        let y_absolute: Vec<f64> = y_signed.iter().map(|v| v.abs()).collect();
        for y in [y_signed, y_absolute] {
            let data = Data::new(&y, p, n, &a.data, 2).unwrap();
            let y_positive = data.y_positive();
            let route = GramRoute::for_data(&data, &y_positive, q, &a, 1).expect("P = 19 is small enough");
            assert_eq!(route.g_raw.is_some(), y.iter().any(|&v| v < 0.0));
            let theta = Dense::from_vec(q, 2, vec![4.0, 3.0, 1.0, -0.5, 0.4, 0.1]);
            let UStep { mut work, u_t, negative } = u_step(&data, &x, &theta, 0.5, 1);
            unit_moments_from_gram(&route, &x, &mut work);
            assert!(negative > 0, "the example needs negative scores");
            let limit = GRAM_ROUTE_MAX_NEGATIVE_SHARE * (n * q) as f64;
            assert!((negative as f64) < limit, "{negative} negative scores");

            let mut expected = Dense::zeros(p, q);
            product_with_scores(&y_positive, &work.scores, &mut expected, 1);
            assert!(gram_route_product(&route, &y_positive, &x, &u_t, negative, &mut work));
            let scale = expected.data.iter().fold(0.0f64, |high, v| high.max(v.abs()));
            for (a, e) in work.ybt.data.iter().zip(&expected.data) {
                assert!((a - e).abs() < 1e-12 * scale, "{a} vs {e}");
            }
            // Past the share of negative scores the route declines.
            let too_many = limit as usize + 1;
            assert!(!gram_route_product(&route, &y_positive, &x, &u_t, too_many, &mut work));
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
