//! The NMF-RE estimation loop: ridge (BLUP) updates for U, multiplicative
//! non-negative updates for X and Theta, variance updates and the df cap.

use std::borrow::Cow;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatRef, Par};

use crate::dense::{column_chunks, cross_product, outer_product_sum, product, safe_divide, Dense};
use crate::dfcap::{effective_df, raise_lambda_to_cap, CapRule};
use crate::error::{check_shape, NmfreError, Result};
use crate::init::nndsvdar;
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
    /// Update tau2 each iteration when the cap is off; false holds it fixed.
    pub update_tau2: bool,
    pub start: StartValues,
    pub threads: usize,
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
        }
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Converged,
    MaxIterations,
}

impl StopReason {
    pub fn describe(&self) -> &'static str {
        match self {
            StopReason::Converged => "relative change of the objective below epsilon",
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
}

impl Fit {
    pub fn converged(&self) -> bool {
        self.stop_reason == StopReason::Converged
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
}

/// Parameters and variances as the loop updates them.
struct State {
    x: Dense,
    theta: Dense,
    u: Dense,
    sigma2: f64,
    tau2: f64,
}

/// Buffers reused across iterations so that the loop allocates only Q x Q
/// and Q x K temporaries.
struct Workspace {
    /// X'Y for the current X (Q x N).
    xty: Dense,
    /// Theta A (Q x N).
    fixed: Dense,
    /// Right-hand side of the U-step, then positive part of Theta A + U (Q x N).
    scratch: Dense,
    gram: Dense,
    ybt: Dense,
    bbt: Dense,
    aat: Dense,
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

fn initial_state(data: &Data<'_>, y_positive: &[f64], options: &FitOptions) -> Result<State> {
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

/// Sets `fixed = Theta A`.
fn fixed_scores(theta: &Dense, a: &Dense, fixed: &mut Dense) {
    product(theta, a, fixed);
}

/// Computes the numerator X' max(max(Y,0) - X U, 0) A' of the Theta-step in one
/// pass over Y, without forming the P x N matrix.
fn theta_numerator(y_positive: &[f64], p: usize, x: &Dense, u: &Dense, a: &Dense, threads: usize) -> Dense {
    let (q, k) = (x.cols, a.rows);
    let partials = for_column_ranges(u.cols, threads, p * q, |range| {
        let mut sum = Dense::zeros(q, k);
        let mut ystar = vec![0.0; p];
        let mut projected = vec![0.0; q];
        for n in range {
            let y_col = &y_positive[n * p..(n + 1) * p];
            ystar.copy_from_slice(y_col);
            for qq in 0..q {
                let weight = u.get(qq, n);
                if weight != 0.0 {
                    for (value, xv) in ystar.iter_mut().zip(x.col(qq)) {
                        *value -= xv * weight;
                    }
                }
            }
            for (qq, slot) in projected.iter_mut().enumerate() {
                *slot = x.col(qq).iter().zip(&ystar).map(|(xv, yv)| xv * yv.max(0.0)).sum();
            }
            for kk in 0..k {
                let covariate = a.get(kk, n);
                for qq in 0..q {
                    sum.data[qq + q * kk] += projected[qq] * covariate;
                }
            }
        }
        sum
    });
    let mut total = Dense::zeros(q, k);
    for partial in partials {
        for (t, v) in total.data.iter_mut().zip(&partial.data) {
            *t += v;
        }
    }
    total
}

/// Computes ||Y - X scores||^2 and, in the same pass over Y, X'Y into `xty`.
fn residual_and_cross(y: &[f64], p: usize, x: &Dense, scores: &Dense, xty: &mut Dense, threads: usize) -> f64 {
    let q = x.cols;
    let ranges = column_chunks(scores.cols, threads, 2 * p * q);
    // Split X'Y into the same column ranges so that each range writes its own part.
    let mut pieces: Vec<&mut [f64]> = Vec::with_capacity(ranges.len());
    let mut rest: &mut [f64] = &mut xty.data;
    for range in &ranges {
        let (head, tail) = rest.split_at_mut(range.len() * q);
        pieces.push(head);
        rest = tail;
    }
    let work = |range: std::ops::Range<usize>, out: &mut [f64]| -> f64 {
        let mut rss = 0.0;
        let mut fitted = vec![0.0; p];
        for (local, n) in range.enumerate() {
            let y_col = &y[n * p..(n + 1) * p];
            fitted.iter_mut().for_each(|v| *v = 0.0);
            for qq in 0..q {
                let weight = scores.get(qq, n);
                for (f, xv) in fitted.iter_mut().zip(x.col(qq)) {
                    *f += xv * weight;
                }
            }
            rss += y_col.iter().zip(&fitted).map(|(yv, f)| (yv - f) * (yv - f)).sum::<f64>();
            for qq in 0..q {
                out[local * q + qq] = x.col(qq).iter().zip(y_col).map(|(xv, yv)| xv * yv).sum();
            }
        }
        rss
    };
    if ranges.len() <= 1 {
        let range = ranges.into_iter().next().unwrap_or(0..0);
        return work(range, &mut xty_slice_all(&mut pieces));
    }
    std::thread::scope(|scope| {
        let work = &work;
        let mut iter = ranges.into_iter().zip(pieces);
        let (first_range, first_piece) = iter.next().expect("at least two ranges");
        let handles: Vec<_> = iter.map(|(range, piece)| scope.spawn(move || work(range, piece))).collect();
        let mut rss = work(first_range, first_piece);
        for handle in handles {
            match handle.join() {
                Ok(value) => rss += value,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
        rss
    })
}

fn xty_slice_all<'s>(pieces: &'s mut [&mut [f64]]) -> &'s mut [f64] {
    match pieces.first_mut() {
        Some(piece) => piece,
        None => &mut [],
    }
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
    let y_positive = data.y_positive();
    let state = initial_state(data, &y_positive, options)?;
    run(data, options, &y_positive, state, interrupted)
}

/// Computes the values a fit starts from: the user's starting values where
/// `options.start` has them, otherwise NNDSVDar for X, ones for Theta and
/// zeros for U, normalised so that X's columns sum to 1. Every field of the
/// result is set.
///
/// Fits that share this start through [`fit_from_start`] match [`fit`] with
/// the same options exactly, because the start is what `fit` computes first.
pub fn start_values(data: &Data<'_>, options: &FitOptions) -> Result<StartValues> {
    validate_options(data, options)?;
    let state = initial_state(data, &data.y_positive(), options)?;
    Ok(StartValues { x: Some(state.x), theta: Some(state.theta), u: Some(state.u) })
}

/// Fits NMF-RE from starting values prepared by [`start_values`], which are
/// used as they are, without normalising them again. `options.start` is
/// ignored. All three of X, Theta and U must be set.
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
    run(data, options, &data.y_positive(), state, interrupted)
}

/// Runs the estimation loop from `state` and assembles the fit.
fn run(
    data: &Data<'_>,
    options: &FitOptions,
    y_positive: &[f64],
    mut state: State,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<Fit> {
    let (p, n, k, q) = (data.p, data.n, data.k, options.rank);
    let threads = options.threads.max(1);
    let par = par_for(threads);
    let y_pos_ref = MatRef::from_column_major_slice(y_positive, p, n);
    let a = data.a_dense();
    let cap = options.cap.ceiling(n, q);

    let mut work = Workspace {
        xty: Dense::zeros(q, n),
        fixed: Dense::zeros(q, n),
        scratch: Dense::zeros(q, n),
        gram: Dense::zeros(q, q),
        ybt: Dense::zeros(p, q),
        bbt: Dense::zeros(q, q),
        aat: Dense::zeros(k, k),
    };
    outer_product_sum(&a, &a, &mut work.aat);
    matmul(work.xty.as_mut(), Accum::Replace, state.x.as_ref().transpose(), data.y_ref(), 1.0, par);

    let mut record = CapRecord::default();
    let mut objective = Vec::new();
    let mut lambda = state.sigma2 / state.tau2;
    let mut eigenvalues = vec![0.0; q];
    let mut rss = f64::NAN;
    let mut stop_reason = StopReason::MaxIterations;
    let mut iterations = 0;

    for iteration in 1..=options.maxit {
        iterations = iteration;
        if interrupted() {
            return Err(NmfreError::Interrupted);
        }

        // U-step first: given X and Theta it has a closed form, and the
        // X- and Theta-steps below need the current random effects.
        cross_product(&state.x, &state.x, &mut work.gram);
        eigenvalues = symmetric_eigenvalues(&work.gram)?;
        lambda = state.sigma2 / state.tau2;
        if let Some(cap) = cap {
            if effective_df(&eigenvalues, lambda, n) > cap {
                lambda = raise_lambda_to_cap(&eigenvalues, lambda, n, cap).lambda;
                state.tau2 = state.sigma2 / lambda;
                record.hits += 1;
                record.first.get_or_insert(iteration);
                record.last = Some(iteration);
            }
        }
        let mut ridge = work.gram.clone();
        for i in 0..q {
            ridge.data[i + q * i] += lambda;
        }
        let cholesky = Cholesky::new(&ridge, "X'X + lambda I")?;
        fixed_scores(&state.theta, &a, &mut work.fixed);
        product(&work.gram, &work.fixed, &mut work.scratch);
        for (rhs, xty) in work.scratch.data.iter_mut().zip(&work.xty.data) {
            *rhs = xty - *rhs;
        }
        cholesky.solve_columns(&mut work.scratch);
        state.u.copy_from(&work.scratch);
        centre_rows(&mut state.u);

        // X-step: Lee-Seung update against the positive part of the scores.
        for ((b, f), u) in work.scratch.data.iter_mut().zip(&work.fixed.data).zip(&state.u.data) {
            *b = (f + u).max(0.0);
        }
        matmul(work.ybt.as_mut(), Accum::Replace, y_pos_ref, work.scratch.as_ref().transpose(), 1.0, par);
        outer_product_sum(&work.scratch, &work.scratch, &mut work.bbt);
        let mut denominator = Dense::zeros(p, q);
        product(&state.x, &work.bbt, &mut denominator);
        for ((xv, num), den) in state.x.data.iter_mut().zip(&work.ybt.data).zip(&denominator.data) {
            *xv = (*xv * safe_divide(*num, *den, EPS)).max(EPS);
        }
        normalise(&mut state.x, &mut state.theta, &mut state.u);

        // Theta-step against the data with the random effects removed.
        cross_product(&state.x, &state.x, &mut work.gram);
        match options.theta_mode {
            ThetaMode::NonNegative => {
                let numerator = theta_numerator(y_positive, p, &state.x, &state.u, &a, threads);
                let mut gram_theta = Dense::zeros(q, k);
                product(&work.gram, &state.theta, &mut gram_theta);
                let mut denominator = Dense::zeros(q, k);
                product(&gram_theta, &work.aat, &mut denominator);
                for ((t, num), den) in state.theta.data.iter_mut().zip(&numerator.data).zip(&denominator.data) {
                    *t = (*t * safe_divide(*num, *den, EPS)).max(EPS);
                }
            }
            ThetaMode::Free => {
                state.theta = free_theta(data, &state.x, &state.u, &a, &work.gram, &work.aat, par)?;
            }
        }

        // Residuals at the new parameters; the same pass refreshes X'Y for the next U-step.
        fixed_scores(&state.theta, &a, &mut work.fixed);
        for (s, u) in work.fixed.data.iter_mut().zip(&state.u.data) {
            *s += u;
        }
        rss = residual_and_cross(data.y, p, &state.x, &work.fixed, &mut work.xty, threads);

        // Variance components: sigma2 on a slow schedule, tau2 only without the cap.
        if iteration >= options.sigma2_update_from && iteration % options.sigma2_update_every == 0 {
            let mean_square = rss / (p * n) as f64;
            state.sigma2 = (0.95 * state.sigma2 + 0.05 * mean_square).clamp(VARIANCE_MIN, VARIANCE_MAX);
        }
        if cap.is_none() && options.update_tau2 {
            let trace_inverse: f64 = eigenvalues.iter().map(|d| 1.0 / (d.max(0.0) + lambda)).sum();
            let target = state.u.squared_norm() / (n * q) as f64 + state.sigma2 * trace_inverse / q as f64;
            state.tau2 = (0.8 * state.tau2 + 0.2 * target).clamp(VARIANCE_MIN, VARIANCE_MAX);
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
        if let Some(previous) = previous {
            if (previous - value).abs() / (previous.abs() + EPS) < options.epsilon {
                stop_reason = StopReason::Converged;
                break;
            }
        }
    }

    order_bases(&mut state);
    cross_product(&state.x, &state.x, &mut work.gram);
    eigenvalues = symmetric_eigenvalues(&work.gram).unwrap_or(eigenvalues);
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
    })
}

/// Centres each row of U to mean 0 across units, so that the random effects
/// do not absorb an intercept that belongs in Theta.
fn centre_rows(u: &mut Dense) {
    let (q, n) = (u.rows, u.cols);
    for qq in 0..q {
        let mean = (0..n).map(|j| u.get(qq, j)).sum::<f64>() / n as f64;
        for j in 0..n {
            let value = u.get(qq, j) - mean;
            u.set(qq, j, value);
        }
    }
}

/// Exact least squares `Theta = (X'X)^{-1} X'(Y - XU) A' (AA')^{-1}`.
fn free_theta(data: &Data<'_>, x: &Dense, u: &Dense, a: &Dense, gram: &Dense, aat: &Dense, par: Par) -> Result<Dense> {
    let (q, n, k) = (x.cols, data.n, data.k);
    let mut xty = Dense::zeros(q, n);
    matmul(xty.as_mut(), Accum::Replace, x.as_ref().transpose(), data.y_ref(), 1.0, par);
    let mut gu = Dense::zeros(q, n);
    product(gram, u, &mut gu);
    for (t, g) in xty.data.iter_mut().zip(&gu.data) {
        *t -= g;
    }
    // middle = X'(Y - XU) A'
    let mut middle = Dense::zeros(q, k);
    let mut at = Dense::zeros(n, k);
    for j in 0..n {
        for kk in 0..k {
            at.set(j, kk, a.get(kk, j));
        }
    }
    product(&xty, &at, &mut middle);
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
