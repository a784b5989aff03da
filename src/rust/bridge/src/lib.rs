//! extendr bridge: converts R vectors to core types, calls nmfre-core and
//! builds the result lists. No statistics here.
//!
//! Every exported function returns a list with `ok = TRUE` and the results,
//! or `ok = FALSE` and `error`, a message that the R side raises with
//! `stop()`. Errors are never returned to extendr, because extendr 0.9 hands
//! their text to R as a printf format, where a `%` from a user's name would
//! crash R. Panics are caught here too and reported as internal errors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::{Duration, Instant};

use extendr_api::prelude::*;
use nmfre_core::{
    fit, infer, scan_rates, simulate, BootstrapOptions, CapRule, Conditioning, Data, Dense, Distribution, Fit,
    FitOptions, InferenceOptions, InformationRule, NmfreError, Sigma2Rule, SimulationOptions, StartValues, ThetaMode,
    WeightKind,
};

mod options;
use options::Options;

extern "C" {
    /// Defined in src/interrupt.c: 1 when the user pressed Ctrl-C, else 0.
    fn nmfre_check_interrupt() -> std::os::raw::c_int;
}

/// Polls R for a pending interrupt at most every 100 ms; must run on R's thread.
struct InterruptPoller {
    last: Instant,
}

impl InterruptPoller {
    fn new() -> Self {
        InterruptPoller { last: Instant::now() }
    }

    fn poll(&mut self) -> bool {
        if self.last.elapsed() < Duration::from_millis(100) {
            return false;
        }
        self.last = Instant::now();
        // SAFETY: called on the R main thread; the C function only calls
        // R_CheckUserInterrupt inside R_ToplevelExec, which cannot longjmp.
        unsafe { nmfre_check_interrupt() != 0 }
    }
}

fn silence_panic_output() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fn error_list(message: String) -> Robj {
    list!(ok = false, error = message).into()
}

/// Runs `body`, turning a core error or a panic into an error list.
fn guarded(body: impl FnOnce() -> std::result::Result<Robj, String>) -> Robj {
    silence_panic_output();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(message)) => error_list(message),
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            error_list(format!("internal error in nmfre's Rust code ({detail}); please report it"))
        }
    }
}

fn core_error(error: NmfreError) -> String {
    error.to_string()
}

fn real_slice<'a>(value: &'a Robj, name: &str) -> std::result::Result<&'a [f64], String> {
    value.as_real_slice().ok_or_else(|| format!("`{name}` must be a double vector"))
}

fn matrix_robj(matrix: &Dense) -> Robj {
    let mut robj: Robj = matrix.data.clone().into();
    let _ = robj.set_attrib("dim", [matrix.rows as i32, matrix.cols as i32]);
    robj
}

fn optional_matrix(options: &Options, name: &str, rows: usize, cols: usize) -> std::result::Result<Option<Dense>, String> {
    match options.optional_reals(name)? {
        None => Ok(None),
        Some(values) if values.len() == rows * cols => Ok(Some(Dense::from_vec(rows, cols, values))),
        Some(values) => Err(format!("`{name}` has {} values but must be {rows} x {cols}", values.len())),
    }
}

fn fit_options(options: &Options, p: usize, n: usize, k: usize) -> std::result::Result<FitOptions, String> {
    let rank = options.count("rank")?;
    let cap = match options.string("cap_type")?.as_str() {
        "rate" => CapRule::Rate(options.real("cap_value")?),
        "absolute" => CapRule::Absolute(options.real("cap_value")?),
        "off" => CapRule::Off,
        other => return Err(format!("unknown cap type '{other}'")),
    };
    let theta_mode = match options.string("theta")?.as_str() {
        "nonneg" => ThetaMode::NonNegative,
        "free" => ThetaMode::Free,
        other => return Err(format!("unknown theta mode '{other}'")),
    };
    Ok(FitOptions {
        rank,
        theta_mode,
        cap,
        maxit: options.count("maxit")?,
        epsilon: options.real("epsilon")?,
        seed: options.seed("seed")?,
        sigma2_start: options.real("sigma2_start")?,
        tau2_start: options.real("tau2_start")?,
        sigma2_update_from: options.count("sigma2_update_from")?,
        sigma2_update_every: options.count("sigma2_update_every")?,
        update_tau2: options.flag("update_tau2")?,
        start: StartValues {
            x: optional_matrix(options, "start_X", p, rank)?,
            theta: optional_matrix(options, "start_Theta", rank, k)?,
            u: optional_matrix(options, "start_U", rank, n)?,
        },
        threads: options.count("threads")?,
        polish: options.flag("polish")?,
        kkt_tolerance: options.real("kkt_tolerance")?,
        polish_variances: options.flag("polish_variances")?,
        extrapolate: options.flag("extrapolate")?,
        nstart: options.count("nstart")?,
    })
}

/// Fits NMF-RE; `y` is P x N and `a` is K x N, both double and column-major.
#[extendr]
fn nmfre_fit_rust(y: Robj, p: i32, n: i32, a: Robj, k: i32, options: List) -> Robj {
    guarded(|| {
        let (p, n, k) = (p.max(0) as usize, n.max(0) as usize, k.max(0) as usize);
        let data = Data::new(real_slice(&y, "Y")?, p, n, real_slice(&a, "A")?, k).map_err(core_error)?;
        let options = Options::new(options);
        let settings = fit_options(&options, p, n, k)?;
        let mut poller = InterruptPoller::new();
        let result = fit(&data, &settings, &mut || poller.poll()).map_err(core_error)?;
        let list = list!(
            ok = true,
            X = matrix_robj(&result.x),
            Theta = matrix_robj(&result.theta),
            U = matrix_robj(&result.u),
            sigma2 = result.sigma2,
            tau2 = result.tau2,
            lambda = result.lambda,
            dfU = result.dfu,
            cap = optional_real(result.cap),
            cap_hits = result.cap_hits as f64,
            cap_first_hit = optional_iteration(result.cap_first_hit),
            cap_last_hit = optional_iteration(result.cap_last_hit),
            iterations = result.iterations as f64,
            converged = result.converged(),
            stop_reason = result.stop_reason.describe(),
            rss = result.rss,
            objective = result.objective,
            paper_iterations = result.paper_iterations as f64,
            kkt_x = result.kkt_x,
            kkt_theta = result.kkt_theta,
            variance_change = result.variance_change,
            start_objective = result.starts.iter().map(|s| s.objective).collect::<Vec<f64>>(),
            start_converged = result.starts.iter().map(|s| s.converged).collect::<Vec<bool>>(),
            start_iterations = result.starts.iter().map(|s| s.iterations as f64).collect::<Vec<f64>>(),
            start_theta = result.starts.iter().flat_map(|s| s.theta.data.iter().copied()).collect::<Vec<f64>>(),
            best_start = result.best_start as f64
        );
        Ok(list.into())
    })
}

/// Converts an optional iteration number to a double, NA when absent.
fn optional_iteration(value: Option<usize>) -> Robj {
    optional_real(value.map(|v| v as f64))
}

/// Converts an optional value to a double, NA when absent.
fn optional_real(value: Option<f64>) -> Robj {
    value.map(Robj::from).unwrap_or_else(|| Robj::from(Rfloat::na()))
}

/// Builds the per-rate entry of a scan: the fit's summary, or its error.
fn scan_entry(rate: f64, result: &std::result::Result<Fit, NmfreError>) -> Robj {
    match result {
        Ok(fit) => list!(
            ok = true,
            rate = rate,
            cap = optional_real(fit.cap),
            dfU = fit.dfu,
            cap_hits = fit.cap_hits as f64,
            cap_first_hit = optional_iteration(fit.cap_first_hit),
            converged = fit.converged(),
            iterations = fit.iterations as f64,
            stop_reason = fit.stop_reason.describe(),
            sigma2 = fit.sigma2,
            tau2 = fit.tau2,
            lambda = fit.lambda,
            icc = fit.intraclass_correlation()
        )
        .into(),
        Err(error) => list!(ok = false, rate = rate, error = error.to_string()).into(),
    }
}

/// Fits at every cap rate in `options$rates` in parallel from one shared
/// start and returns one summary list per rate, in order. `options` is as
/// for `nmfre_fit_rust`, plus `rates` and `verbose`; its cap settings are
/// ignored.
#[extendr]
fn nmfre_scan_rust(y: Robj, p: i32, n: i32, a: Robj, k: i32, options: List) -> Robj {
    guarded(|| {
        let (p, n, k) = (p.max(0) as usize, n.max(0) as usize, k.max(0) as usize);
        let data = Data::new(real_slice(&y, "Y")?, p, n, real_slice(&a, "A")?, k).map_err(core_error)?;
        let options = Options::new(options);
        let rates = options.optional_reals("rates")?.ok_or_else(|| "option `rates` is missing".to_string())?;
        let verbose = options.flag("verbose")?;
        let settings = fit_options(&options, p, n, k)?;
        let threads = settings.threads;
        let total = rates.len();
        let mut poller = InterruptPoller::new();
        let mut reported = usize::MAX;
        let mut monitor = |finished: usize| -> bool {
            if verbose && finished != reported {
                reported = finished;
                reprint!("\rScanning cap rates: {finished} of {total} fits done");
                if finished == total {
                    reprintln!();
                }
            }
            poller.poll()
        };
        let results = scan_rates(&data, &settings, &rates, threads, &mut monitor).map_err(core_error)?;
        let entries: Vec<Robj> = rates.iter().zip(&results).map(|(&rate, result)| scan_entry(rate, result)).collect();
        Ok(list!(ok = true, fits = List::from_values(entries)).into())
    })
}

/// Draws Y = X (Theta A + U) + E; `x` is P x Q, `theta` Q x K and `a` K x N,
/// with the dimensions P, Q, K and N given in `options`.
#[extendr]
fn nmfre_simulate_rust(x: Robj, theta: Robj, a: Robj, options: List) -> Robj {
    guarded(|| {
        let options = Options::new(options);
        let (p, q, k, n) = (options.count("P")?, options.count("Q")?, options.count("K")?, options.count("N")?);
        let matrix = |value: &Robj, name: &str, rows: usize, cols: usize| -> std::result::Result<Dense, String> {
            let values = real_slice(value, name)?;
            if values.len() != rows * cols {
                return Err(format!("`{name}` has {} values but must be {rows} x {cols}", values.len()));
            }
            Ok(Dense::from_vec(rows, cols, values.to_vec()))
        };
        let distribution = |name: &str| -> std::result::Result<Distribution, String> {
            match options.string(name)?.as_str() {
                "gaussian" => Ok(Distribution::Gaussian),
                "exponential" => Ok(Distribution::CentredExponential),
                other => Err(format!("unknown distribution '{other}' for `{name}`")),
            }
        };
        let settings = SimulationOptions {
            sigma2: options.real("sigma2")?,
            tau2: options.real("tau2")?,
            errors: distribution("errors")?,
            effects: distribution("random_effects")?,
            seed: options.seed("seed")?,
        };
        let (x, theta, a) = (matrix(&x, "X", p, q)?, matrix(&theta, "Theta", q, k)?, matrix(&a, "A", k, n)?);
        let result = simulate(&x, &theta, &a, &settings).map_err(core_error)?;
        Ok(list!(
            ok = true,
            Y = matrix_robj(&result.y),
            U = matrix_robj(&result.u),
            E = matrix_robj(&result.e),
            truncated = result.truncated as f64
        )
        .into())
    })
}

/// Computes covariances of vec(Theta) and the bootstrap at a given fit.
#[extendr]
fn nmfre_infer_rust(y: Robj, p: i32, n: i32, a: Robj, k: i32, fitted: List, options: List) -> Robj {
    guarded(|| {
        let (p, n, k) = (p.max(0) as usize, n.max(0) as usize, k.max(0) as usize);
        let data = Data::new(real_slice(&y, "Y")?, p, n, real_slice(&a, "A")?, k).map_err(core_error)?;
        let fitted = Options::new(fitted);
        let q = fitted.count("rank")?;
        let x = Dense::from_vec(p, q, fitted.reals_of_length("X", p * q)?);
        let theta = Dense::from_vec(q, k, fitted.reals_of_length("Theta", q * k)?);
        let u = Dense::from_vec(q, n, fitted.reals_of_length("U", q * n)?);
        let conditioning = Conditioning { x: &x, theta: &theta, u: &u, lambda: fitted.real("lambda")? };

        let options = Options::new(options);
        let sigma2_rule = match options.string("sigma2_rule")?.as_str() {
            "corrected" => Sigma2Rule::Corrected,
            "plain" => Sigma2Rule::Plain,
            "fixed" => Sigma2Rule::FixedOnly,
            other => return Err(format!("unknown sigma2 rule '{other}'")),
        };
        let information = match options.string("information")?.as_str() {
            "corrected" => InformationRule::Corrected,
            "plain" => InformationRule::Plain,
            other => return Err(format!("unknown information rule '{other}'")),
        };
        let replicates = options.count("B")?;
        let bootstrap = if replicates > 0 {
            let weights = match options.string("weights")?.as_str() {
                "exponential" => WeightKind::Exponential,
                "rademacher" => WeightKind::Rademacher,
                "mammen" => WeightKind::Mammen,
                "normal" => WeightKind::Normal,
                other => return Err(format!("unknown weight distribution '{other}'")),
            };
            Some(BootstrapOptions {
                replicates,
                weights,
                seed: options.seed("boot_seed")?,
                project: options.flag("project")?,
                level: options.real("level")?,
                threads: options.count("threads")?,
            })
        } else {
            None
        };
        let settings = InferenceOptions { sigma2_rule, information, bootstrap };
        let mut poller = InterruptPoller::new();
        let result = infer(&data, &conditioning, &settings, &mut || poller.poll()).map_err(core_error)?;

        let boot: Robj = match &result.bootstrap {
            Some(boot) => list!(
                replicates = matrix_robj(&boot.replicates),
                se = boot.se.clone(),
                lower = boot.lower.clone(),
                upper = boot.upper.clone()
            )
            .into(),
            None => ().into(),
        };
        let list = list!(
            ok = true,
            rss = result.rss,
            trace_hat = result.trace_hat,
            dfU = result.dfu,
            sigma2 = result.sigma2,
            information = matrix_robj(&result.information),
            H = matrix_robj(&result.inverse_information),
            sandwich = matrix_robj(&result.sandwich),
            scores = matrix_robj(&result.scores),
            bootstrap = boot
        );
        Ok(list.into())
    })
}

/// Counts non-finite, negative and zero values of a double vector and
/// returns their first positions (1-based), its maximum and mean.
#[extendr]
fn nmfre_summarise_rust(values: Robj) -> Robj {
    guarded(|| {
        let summary = nmfre_core::dense::summarise_values(real_slice(&values, "values")?);
        let position = |index: Option<usize>| index.map(|i| (i + 1) as f64).unwrap_or(0.0);
        Ok(list!(
            ok = true,
            nonfinite = summary.nonfinite as f64,
            first_nonfinite = position(summary.first_nonfinite),
            negative = summary.negative as f64,
            first_negative = position(summary.first_negative),
            zeros = summary.zeros as f64,
            max = summary.max,
            mean = summary.mean
        )
        .into())
    })
}

extendr_module! {
    mod nmfre;
    fn nmfre_summarise_rust;
    fn nmfre_scan_rust;
    fn nmfre_fit_rust;
    fn nmfre_infer_rust;
    fn nmfre_simulate_rust;
}
