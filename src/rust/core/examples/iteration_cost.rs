//! Measures the cost of one iteration of the NMF-RE loop in units of one
//! dense product of Y with a Q x N matrix (Y B', P x N times N x Q, done by
//! faer), on a synthetic P = 200, N = 100000, Q = 8, K = 4 problem.
//!
//! Run from src/rust (or through inst/bench/iteration_cost.sh):
//!   cargo run --release --example iteration_cost -p nmfre-core -- [--iterations 20] [--threads 1]
//!
//! The time per iteration is `(t(3 + m) - t(3)) / m` for fits of 3 and
//! 3 + m iterations from the same start (epsilon = 0), so the set-up of a
//! fit is not counted. The product time is the median of 11 products.
//! Target: one iteration costs at most 4 products.

use std::time::Instant;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatRef, Par};
use nmfre_core::{fit, Data, Dense, FitOptions, StartValues};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

const P: usize = 200;
const N: usize = 100_000;
const Q: usize = 8;
const K: usize = 4;
/// Iterations of the shorter fit, whose time is subtracted.
const WARM_ITERATIONS: usize = 3;
const TARGET_PRODUCTS: f64 = 4.0;

struct Settings {
    iterations: usize,
    threads: usize,
}

fn parse_settings() -> Result<Settings, String> {
    let mut settings = Settings { iterations: 20, threads: 1 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: usize = value.parse().map_err(|_| format!("{flag} needs a whole number, not {value}"))?;
        match flag.as_str() {
            "--iterations" if number >= 1 => settings.iterations = number,
            "--threads" if number >= 1 => settings.threads = number,
            _ => return Err(format!("unknown or invalid argument {flag} {value}; use --iterations M --threads T")),
        }
    }
    Ok(settings)
}

/// Synthetic data Y = max(X (Theta A + U) + E, 0): X uniform with unit
/// column sums, Theta uniform(5, 15), A = intercept plus uniform(0, 1)
/// covariates, U uniform with variance 1, E uniform with variance 1/12.
fn simulate(rng: &mut ChaCha20Rng) -> (Vec<f64>, Vec<f64>) {
    let mut x = Dense::from_vec(P, Q, (0..P * Q).map(|_| rng.random::<f64>()).collect());
    for q in 0..Q {
        let sum: f64 = x.col(q).iter().sum();
        for i in 0..P {
            let value = x.get(i, q) / sum;
            x.set(i, q, value);
        }
    }
    let theta: Vec<f64> = (0..Q * K).map(|_| 5.0 + 10.0 * rng.random::<f64>()).collect();
    let a: Vec<f64> = (0..N)
        .flat_map(|_| {
            let mut column = vec![1.0];
            column.extend((1..K).map(|_| rng.random::<f64>()));
            column
        })
        .collect();

    let half_width = 3f64.sqrt();
    let mut y = vec![0.0; P * N];
    let mut scores = vec![0.0; Q];
    for n in 0..N {
        for (q, score) in scores.iter_mut().enumerate() {
            let fixed: f64 = (0..K).map(|k| theta[q + Q * k] * a[k + K * n]).sum();
            *score = fixed + half_width * (2.0 * rng.random::<f64>() - 1.0);
        }
        for i in 0..P {
            let mean: f64 = (0..Q).map(|q| x.get(i, q) * scores[q]).sum();
            y[i + P * n] = (mean + rng.random::<f64>() - 0.5).max(0.0);
        }
    }
    (y, a)
}

/// Runs `run` and returns its result and the wall-clock seconds it took.
fn timed<T>(run: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let value = run();
    (value, start.elapsed().as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let settings = match parse_settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("iteration_cost: {message}");
            std::process::exit(2);
        }
    };
    let par = if settings.threads > 1 { Par::rayon(settings.threads) } else { Par::Seq };

    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (y, a) = simulate(&mut rng);
    let data = match Data::new(&y, P, N, &a, K) {
        Ok(data) => data,
        Err(error) => {
            eprintln!("iteration_cost: invalid data: {error}");
            std::process::exit(1);
        }
    };
    let start = StartValues {
        x: Some(Dense::from_vec(P, Q, (0..P * Q).map(|_| 0.5 + rng.random::<f64>()).collect())),
        theta: Some(Dense::filled(Q, K, 1.0)),
        u: Some(Dense::zeros(Q, N)),
    };

    // The reference: one dense product Y B' with B of the scores' shape.
    let b = Dense::from_vec(Q, N, (0..Q * N).map(|_| rng.random::<f64>()).collect());
    let y_ref = MatRef::from_column_major_slice(&y, P, N);
    let mut product = Dense::zeros(P, Q);
    let product_seconds = median(
        (0..11)
            .map(|_| timed(|| matmul(product.as_mut(), Accum::Replace, y_ref, b.as_ref().transpose(), 1.0, par)).1)
            .collect(),
    );

    let run_fit = |maxit: usize| {
        let options = FitOptions {
            rank: Q,
            maxit,
            epsilon: 0.0,
            start: start.clone(),
            threads: settings.threads,
            ..FitOptions::default()
        };
        let (result, seconds) = timed(|| fit(&data, &options, &mut || false));
        match result {
            Ok(fitted) if fitted.iterations == maxit => seconds,
            Ok(fitted) => {
                eprintln!("iteration_cost: the fit stopped after {} of {maxit} iterations", fitted.iterations);
                std::process::exit(1);
            }
            Err(error) => {
                eprintln!("iteration_cost: the fit failed: {error}");
                std::process::exit(1);
            }
        }
    };
    let warm_seconds = run_fit(WARM_ITERATIONS);
    let full_seconds = run_fit(WARM_ITERATIONS + settings.iterations);
    let iteration_seconds = (full_seconds - warm_seconds) / settings.iterations as f64;
    let ratio = iteration_seconds / product_seconds;

    println!("Iteration cost against one dense product Y B' (faer)");
    println!("P = {P}, N = {N}, Q = {Q}, K = {K}, threads = {}, iterations timed = {}", settings.threads, settings.iterations);
    println!("{:<28} {:>12}", "quantity", "ms");
    println!("{:<28} {:>12.3}", "one iteration", 1e3 * iteration_seconds);
    println!("{:<28} {:>12.3}", "one product Y B'", 1e3 * product_seconds);
    println!("{:<28} {:>12.3}", format!("fit of {WARM_ITERATIONS} iterations"), 1e3 * warm_seconds);
    println!("{:<28} {:>12.3}", format!("fit of {} iterations", WARM_ITERATIONS + settings.iterations), 1e3 * full_seconds);
    println!();
    println!(
        "ratio iteration / product = {ratio:.2} (target <= {TARGET_PRODUCTS}) -> {}",
        if ratio <= TARGET_PRODUCTS { "met" } else { "NOT met" }
    );
}
