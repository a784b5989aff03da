//! Several starts of the estimation loop run in parallel, keeping the fit
//! with the lowest final penalised objective.
//!
//! Start 0 is the NNDSVDar (or user-supplied) start; start s >= 1 draws X
//! from stream s of a ChaCha20 generator seeded with the fit's seed. Each
//! start runs single-threaded, so every fit and the choice among them are
//! the same whatever the thread count.

use std::sync::atomic::{AtomicBool, Ordering};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::dense::{wait_polling_interrupts, Dense};
use crate::error::{NmfreError, Result};
use crate::fit::{fit_from, initial_state, normalise, Data, Fit, FitOptions, StartSummary, State};

/// Builds random start s: X uniform on [0.5, 1.5) times a scale that puts
/// X Theta A near the data's level once Theta = 1 absorbs the column sums.
fn random_state(data: &Data<'_>, options: &FitOptions, start: usize) -> State {
    let (p, q, k) = (data.p, options.rank, data.k);
    let mean_y = data.y.iter().map(|v| v.max(0.0)).sum::<f64>() / data.y.len() as f64;
    let mean_a = (data.a.iter().map(|v| v.abs()).sum::<f64>() / data.a.len() as f64).max(f64::MIN_POSITIVE);
    let level = (mean_y / (q as f64 * k as f64 * mean_a)).max(f64::MIN_POSITIVE);
    let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
    rng.set_stream(start as u64);
    let mut x = Dense::from_vec(p, q, (0..p * q).map(|_| (0.5 + rng.random::<f64>()) * level).collect());
    let mut theta = Dense::filled(q, k, 1.0);
    let mut u = Dense::zeros(q, data.n);
    normalise(&mut x, &mut theta, &mut u);
    State { x, theta, u, sigma2: options.sigma2_start, tau2: options.tau2_start }
}

pub(crate) fn fit_from_several_starts(
    data: &Data<'_>,
    options: &FitOptions,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<Fit> {
    let count = options.nstart + 1;
    let workers = options.threads.clamp(1, count);
    let single = FitOptions { threads: 1, nstart: 0, ..options.clone() };
    let first = initial_state(data, &data.y_positive(), options)?;
    let cancel = AtomicBool::new(false);

    let mut results: Vec<Option<Result<Fit>>> = (0..count).map(|_| None).collect();
    std::thread::scope(|scope| {
        let mut first = Some(first);
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let single = &single;
                let cancel = &cancel;
                let own_first = if worker == 0 { first.take() } else { None };
                scope.spawn(move || {
                    let mut own_first = own_first;
                    let mut out = Vec::new();
                    for start in (worker..count).step_by(workers) {
                        let state = match (start, own_first.take()) {
                            (0, Some(state)) => state,
                            _ => random_state(data, single, start),
                        };
                        let result = fit_from(data, single, state, &mut || cancel.load(Ordering::Relaxed));
                        out.push((start, result));
                    }
                    out
                })
            })
            .collect();
        // Only this thread may ask R about interrupts, so workers watch `cancel`.
        wait_polling_interrupts(&handles, interrupted, &cancel);
        for handle in handles {
            match handle.join() {
                Ok(list) => {
                    for (start, result) in list {
                        results[start] = Some(result);
                    }
                }
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
    });
    if cancel.load(Ordering::Relaxed) {
        return Err(NmfreError::Interrupted);
    }

    let mut fits = Vec::with_capacity(count);
    for result in results.into_iter().flatten() {
        fits.push(result?);
    }
    let summaries: Vec<StartSummary> = fits
        .iter()
        .map(|fit| StartSummary {
            objective: fit.objective.last().copied().unwrap_or(f64::INFINITY),
            converged: fit.converged(),
            iterations: fit.iterations,
            theta: fit.theta.clone(),
        })
        .collect();
    // Prefer converged fits; among them the lowest objective, ties to the earliest start.
    let best = (0..fits.len())
        .min_by(|&a, &b| {
            let key = |i: usize| (!summaries[i].converged, summaries[i].objective);
            let (ca, oa) = key(a);
            let (cb, ob) = key(b);
            ca.cmp(&cb).then(oa.total_cmp(&ob)).then(a.cmp(&b))
        })
        .unwrap_or(0);
    let mut chosen = fits.swap_remove(best);
    chosen.starts = summaries;
    chosen.best_start = best;
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::fit;

    fn example() -> (Vec<f64>, Vec<f64>) {
        let (p, n) = (6, 50);
        let mut y = Vec::new();
        for j in 0..n {
            for i in 0..p {
                let early = (p - i) as f64;
                let late = (i + 1) as f64;
                y.push(early * (1.0 + (j % 3) as f64) + late * (2.0 + (j % 5) as f64) + ((i * j) % 4) as f64 * 0.1);
            }
        }
        let a = (0..n).flat_map(|j| [1.0, (j % 2) as f64]).collect();
        (y, a)
    }

    #[test]
    fn several_starts_keep_the_lowest_objective() {
        let (y, a) = example();
        let data = Data::new(&y, 6, 50, &a, 2).unwrap();
        let options = FitOptions { rank: 2, nstart: 3, maxit: 3000, ..FitOptions::default() };
        let result = fit(&data, &options, &mut || false).unwrap();
        assert_eq!(result.starts.len(), 4);
        let best = result.starts[result.best_start].objective;
        for start in result.starts.iter().filter(|s| s.converged) {
            assert!(best <= start.objective);
        }
        assert_eq!(result.objective.last().copied(), Some(best));
    }

    #[test]
    fn starts_do_not_depend_on_threads() {
        let (y, a) = example();
        let data = Data::new(&y, 6, 50, &a, 2).unwrap();
        let one = FitOptions { rank: 2, nstart: 3, maxit: 500, threads: 1, ..FitOptions::default() };
        let two = FitOptions { threads: 2, ..one.clone() };
        let first = fit(&data, &one, &mut || false).unwrap();
        let second = fit(&data, &two, &mut || false).unwrap();
        assert_eq!(first.theta, second.theta);
        assert_eq!(first.best_start, second.best_start);
        for (a, b) in first.starts.iter().zip(&second.starts) {
            assert_eq!(a.objective, b.objective);
        }
    }
}
