//! Scan of df cap rates: one fit per rate, all from the same start, run in
//! parallel.
//!
//! The rate of the df cap (`cap = max(rate * N * Q, 1)`) is chosen by
//! fitting over a grid of rates and comparing, for each, the final dfU with
//! its cap. The start (NNDSVDar and normalisation) does not depend on the
//! rate, so it is computed once and every fit begins from it. Each fit runs
//! on one thread and the threads only share out whole fits, so the results
//! do not depend on the thread count, and the fit at a rate equals a single
//! [`fit`](crate::fit::fit) with that rate.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::dfcap::CapRule;
use crate::error::{NmfreError, Result};
use crate::fit::{fit_from_start, start_values, Data, Fit, FitOptions, StartValues};

/// How often the calling thread polls `monitor` while the fits run.
const MONITOR_INTERVAL: Duration = Duration::from_millis(50);

/// Fits NMF-RE at each cap rate in `rates`, on up to `threads` threads.
///
/// `options` supplies every setting but the cap, which is `CapRule::Rate`
/// of each rate in turn, and the thread count of a single fit, which is 1.
/// The result has one entry per rate, in the order of `rates`. A fit that
/// fails, for example on a non-finite objective, gives an error in its own
/// entry and leaves the other rates alone.
///
/// `monitor` runs on the calling thread, with the number of fits finished so
/// far, at least every 50 ms and once more at the end. When it returns true
/// the running fits stop at their next iteration and the scan returns
/// `NmfreError::Interrupted`.
pub fn scan_rates(
    data: &Data<'_>,
    options: &FitOptions,
    rates: &[f64],
    threads: usize,
    monitor: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Result<Fit>>> {
    if rates.is_empty() {
        return Err(NmfreError::InvalidInput("`rates` must contain at least one cap rate".into()));
    }
    for &rate in rates {
        CapRule::Rate(rate).validate()?;
    }
    let start = start_values(data, options)?;
    let total = rates.len();
    let workers = threads.max(1).min(total);

    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let caller = std::thread::current();

    // Each worker takes the next unfitted rate until none is left; which
    // worker fits which rate changes nothing in the fit itself.
    let work = || -> Vec<(usize, Result<Fit>)> {
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= total {
                break;
            }
            let result = fit_at_rate(data, options, &start, rates[index], &stop);
            done.push((index, result));
            finished.fetch_add(1, Ordering::Release);
            caller.unpark();
        }
        done
    };

    let mut slots: Vec<Option<Result<Fit>>> = (0..total).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers).map(|_| scope.spawn(work)).collect();

        // The calling thread only supervises: it reports progress and
        // relays a stop request, which must happen on this thread when the
        // caller is R.
        loop {
            let count = finished.load(Ordering::Acquire);
            if count >= total || handles.iter().all(|handle| handle.is_finished()) {
                break;
            }
            if monitor(count) {
                stop.store(true, Ordering::Relaxed);
            }
            std::thread::park_timeout(MONITOR_INTERVAL);
        }

        for handle in handles {
            match handle.join() {
                Ok(done) => {
                    for (index, result) in done {
                        slots[index] = Some(result);
                    }
                }
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
    });
    monitor(finished.load(Ordering::Acquire));

    if stop.load(Ordering::Relaxed) {
        return Err(NmfreError::Interrupted);
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(index, slot)| {
            slot.ok_or_else(|| NmfreError::Numerical(format!("the fit at cap rate {} did not run", rates[index])))
        })
        .collect()
}

/// Runs one single-threaded fit at cap rate `rate` from the shared start.
fn fit_at_rate(
    data: &Data<'_>,
    options: &FitOptions,
    start: &StartValues,
    rate: f64,
    stop: &AtomicBool,
) -> Result<Fit> {
    let settings =
        FitOptions { cap: CapRule::Rate(rate), threads: 1, start: StartValues::default(), ..options.clone() };
    fit_from_start(data, &settings, start, &mut || stop.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::fit;

    /// Y = X (Theta A + U) + E for a 4 x 30 problem with rank 2, drawn from
    /// a fixed ChaCha stream; A has an intercept and an alternating indicator.
    fn example() -> (Vec<f64>, Vec<f64>) {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let (p, n) = (4, 30);
        let x = [[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]];
        let mut y = vec![0.0; p * n];
        let mut a = vec![0.0; 2 * n];
        for j in 0..n {
            let group = (j % 2) as f64;
            a[2 * j] = 1.0;
            a[2 * j + 1] = group;
            let scores =
                [20.0 + 5.0 * group + 4.0 * (rng.random::<f64>() - 0.5), 20.0 + 4.0 * (rng.random::<f64>() - 0.5)];
            for i in 0..p {
                let mean = x[0][i] * scores[0] + x[1][i] * scores[1];
                y[i + p * j] = mean + (rng.random::<f64>() - 0.5);
            }
        }
        (y, a)
    }

    fn options() -> FitOptions {
        // A large starting tau2 makes lambda small, so low caps are hit.
        FitOptions { rank: 2, tau2_start: 1000.0, maxit: 3000, ..FitOptions::default() }
    }

    #[test]
    fn scan_matches_single_fits_exactly() {
        let (y, a) = example();
        let data = Data::new(&y, 4, 30, &a, 2).unwrap();
        let rates = [0.1, 0.5, 0.9];
        let scan = scan_rates(&data, &options(), &rates, 2, &mut |_| false).unwrap();
        for (rate, result) in rates.iter().zip(&scan) {
            let scanned = result.as_ref().unwrap();
            let single = fit(&data, &FitOptions { cap: CapRule::Rate(*rate), ..options() }, &mut || false).unwrap();
            assert_eq!(scanned.x, single.x, "X differs at rate {rate}");
            assert_eq!(scanned.theta, single.theta, "Theta differs at rate {rate}");
            assert_eq!(scanned.dfu, single.dfu, "dfU differs at rate {rate}");
            assert_eq!(scanned.iterations, single.iterations, "iterations differ at rate {rate}");
            assert_eq!(scanned.cap, Some(rate * 60.0));
        }
    }

    #[test]
    fn scan_is_identical_across_thread_counts() {
        let (y, a) = example();
        let data = Data::new(&y, 4, 30, &a, 2).unwrap();
        let rates = [0.2, 0.4, 0.6, 0.8, 1.0];
        let one = scan_rates(&data, &options(), &rates, 1, &mut |_| false).unwrap();
        let three = scan_rates(&data, &options(), &rates, 3, &mut |_| false).unwrap();
        for (first, second) in one.iter().zip(&three) {
            let (first, second) = (first.as_ref().unwrap(), second.as_ref().unwrap());
            assert_eq!(first.theta, second.theta);
            assert_eq!(first.u, second.u);
            assert_eq!(first.sigma2, second.sigma2);
            assert_eq!(first.cap_first_hit, second.cap_first_hit);
        }
    }

    #[test]
    fn low_rate_is_hit_and_binds() {
        // tau2 starts at 1000, so lambda = 0.001 and dfU starts near N Q = 60,
        // far above the cap 0.1 * 60 = 6 at the first iteration.
        let (y, a) = example();
        let data = Data::new(&y, 4, 30, &a, 2).unwrap();
        let scan = scan_rates(&data, &options(), &[0.1], 1, &mut |_| false).unwrap();
        let fit = scan[0].as_ref().unwrap();
        assert_eq!(fit.cap_first_hit, Some(1));
        // The cap sets lambda at the U-step, and the X-step after it moves
        // dfU by as much as X still moves, which is tiny once converged.
        assert!(fit.dfu <= 6.0 * (1.0 + 1e-6), "dfU {} above the cap 6", fit.dfu);
        assert!(fit.dfu / 6.0 >= 0.99, "dfU {} does not bind at the cap 6", fit.dfu);
    }

    #[test]
    fn monitor_sees_every_fit_and_can_stop() {
        let (y, a) = example();
        let data = Data::new(&y, 4, 30, &a, 2).unwrap();
        let mut last = 0;
        scan_rates(&data, &options(), &[0.3, 0.6], 2, &mut |count| {
            last = count;
            false
        })
        .unwrap();
        assert_eq!(last, 2);

        let stopped =
            scan_rates(&data, &FitOptions { maxit: 1_000_000, epsilon: 0.0, ..options() }, &[0.3, 0.6], 2, &mut |_| {
                true
            });
        assert_eq!(stopped.err(), Some(NmfreError::Interrupted));
    }

    #[test]
    fn invalid_rates_are_rejected() {
        let (y, a) = example();
        let data = Data::new(&y, 4, 30, &a, 2).unwrap();
        assert!(matches!(scan_rates(&data, &options(), &[], 1, &mut |_| false), Err(NmfreError::InvalidInput(_))));
        assert!(matches!(
            scan_rates(&data, &options(), &[0.5, -1.0], 1, &mut |_| false),
            Err(NmfreError::InvalidInput(_))
        ));
        assert!(matches!(
            scan_rates(&data, &options(), &[f64::NAN], 1, &mut |_| false),
            Err(NmfreError::InvalidInput(_))
        ));
    }

    #[test]
    fn intraclass_correlation_matches_definition() {
        let (y, a) = example();
        let data = Data::new(&y, 4, 30, &a, 2).unwrap();
        let result = fit(&data, &options(), &mut || false).unwrap();
        let trace: f64 = result.x.data.iter().map(|v| v * v).sum();
        let expected = result.tau2 * trace / (result.tau2 * trace + result.sigma2 * 4.0);
        assert!((result.intraclass_correlation() - expected).abs() < 1e-15);
    }
}
