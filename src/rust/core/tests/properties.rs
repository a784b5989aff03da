//! Property tests on random shapes and values: every fit either returns
//! finite results or a typed error, and never panics.

use nmfre_core::{fit, infer, CapRule, Conditioning, Data, FitOptions, InferenceOptions, InformationRule, Sigma2Rule, ThetaMode};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn random_case(rng: &mut ChaCha20Rng) -> (usize, usize, usize, Vec<f64>, Vec<f64>, usize) {
    let p = rng.random_range(1..8usize);
    let n = rng.random_range(2..30usize);
    let k = rng.random_range(1..3usize).min(n);
    let zero_fraction = if rng.random::<bool>() { 0.7 } else { 0.0 };
    let scale = [1e-3, 1.0, 1e3][rng.random_range(0..3usize)];
    let y: Vec<f64> = (0..p * n)
        .map(|_| if rng.random::<f64>() < zero_fraction { 0.0 } else { scale * rng.random::<f64>() * 10.0 })
        .collect();
    // An intercept row, then covariates in [0, 1].
    let a: Vec<f64> = (0..n).flat_map(|_| (0..k).map(|row| if row == 0 { 1.0 } else { 0.0 })).collect();
    let mut a = a;
    for j in 0..n {
        for row in 1..k {
            a[row + k * j] = rng.random::<f64>();
        }
    }
    let q = rng.random_range(1..=p.min(n));
    (p, n, k, y, a, q)
}

#[test]
fn random_problems_give_finite_fits_or_typed_errors() {
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let mut fitted = 0;
    for case in 0..300 {
        let (p, n, k, y, a, q) = random_case(&mut rng);
        if y.iter().all(|&v| v == 0.0) {
            continue;
        }
        let data = Data::new(&y, p, n, &a, k).unwrap();
        let cap = match case % 3 {
            0 => CapRule::Off,
            1 => CapRule::Rate(0.2),
            _ => CapRule::Absolute(1.5),
        };
        let theta_mode = if case % 4 == 0 { ThetaMode::Free } else { ThetaMode::NonNegative };
        let options = FitOptions { rank: q, cap, theta_mode, maxit: 300, seed: case, ..FitOptions::default() };
        match fit(&data, &options, &mut || false) {
            Ok(result) => {
                fitted += 1;
                let all = result.x.data.iter().chain(&result.theta.data).chain(&result.u.data);
                assert!(all.clone().all(|v| v.is_finite()), "case {case}: non-finite parameter");
                assert!(result.x.data.iter().all(|&v| v >= 0.0), "case {case}: negative X");
                if theta_mode == ThetaMode::NonNegative {
                    assert!(result.theta.data.iter().all(|&v| v >= 0.0), "case {case}: negative Theta");
                }
                assert!(result.sigma2.is_finite(), "case {case}: non-finite sigma2");
                assert!(result.tau2.is_finite(), "case {case}: non-finite tau2");
                assert!(result.dfu.is_finite(), "case {case}: non-finite dfU");
                assert!(result.dfu <= (n * q) as f64 + 1e-9);
                if let Some(cap) = result.cap {
                    assert!(cap > 0.0);
                }
                let conditioning = Conditioning { x: &result.x, theta: &result.theta, u: &result.u, lambda: result.lambda };
                let settings = InferenceOptions {
                    sigma2_rule: Sigma2Rule::Corrected,
                    information: InformationRule::Corrected,
                    bootstrap: None,
                };
                if let Ok(inference) = infer(&data, &conditioning, &settings, &mut || false) {
                    assert!(inference.sandwich.data.iter().all(|v| v.is_finite()), "case {case}: non-finite sandwich");
                }
            }
            Err(error) => {
                // Typed errors are acceptable, but their message must not be empty.
                assert!(!error.to_string().is_empty());
            }
        }
    }
    assert!(fitted > 250, "only {fitted} of the random problems could be fitted");
}

#[test]
fn rank_equal_to_min_dimension_fits() {
    let y: Vec<f64> = (0..12).map(|i| 1.0 + (i % 5) as f64).collect();
    let a = vec![1.0; 4];
    let data = Data::new(&y, 3, 4, &a, 1).unwrap();
    let options = FitOptions { rank: 3, maxit: 200, ..FitOptions::default() };
    let result = fit(&data, &options, &mut || false).unwrap();
    assert!(result.theta.data.iter().all(|v| v.is_finite()));
}

#[test]
fn rank_above_min_dimension_is_an_error() {
    let y = vec![1.0; 6];
    let a = vec![1.0; 3];
    let data = Data::new(&y, 2, 3, &a, 1).unwrap();
    let options = FitOptions { rank: 3, ..FitOptions::default() };
    assert!(fit(&data, &options, &mut || false).is_err());
}

#[test]
fn non_finite_data_is_an_error() {
    let y = vec![1.0, f64::NAN, 2.0, 3.0];
    let a = vec![1.0, 1.0];
    assert!(Data::new(&y, 2, 2, &a, 1).is_err());
    assert!(Data::new(&y[..3], 2, 2, &a, 1).is_err());
}
