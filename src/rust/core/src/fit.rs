//! The NMF-RE estimation loop: ridge (BLUP) updates for U, multiplicative
//! non-negative updates for X and Theta, variance updates and the df cap.

use std::borrow::Cow;

use faer::{MatRef, Par};

use crate::columns::{transpose_into, transposed};
use crate::dense::{cross_product, product, safe_divide, Dense};
use crate::dfcap::{effective_df, raise_lambda_to_cap, raise_lambda_to_cap_within, CapRule};
use crate::error::{check_shape, NmfreError, Result};
use crate::init::nndsvdar;
use crate::accelerate::Extrapolation;
use crate::linalg::{symmetric_eigenvalues, Cholesky};

mod gram;
mod passes;
mod random_effects;
mod workspace;

use gram::{gram_route_product, rescale_unit_moments, unit_moments_from_gram, GramRoute};
use passes::{product_with_scores, project_data, residual_sum_of_squares, DataSummary};
use random_effects::{normalise_transposed, random_effects_and_scores, unit_statistics, update_random_effects};
use workspace::Workspace;

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
    use super::gram::GRAM_ROUTE_MAX_NEGATIVE_SHARE;
    use super::*;
    use crate::dense::{column_chunks, gemm};

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
