//! Orthodont (Potthoff and Roy 1964, as shipped in R's nlme package): dental
//! distance in mm at ages 8, 10, 12 and 14 for 16 boys and 11 girls.
//! Reference values from MODEL.md's check, computed by the method author's
//! implementation: Theta = (90.50, 9.43), X = (0.2308, 0.2409, 0.2566,
//! 0.2717), about 230 iterations, dfU about 2.1 with cap rate 0.21.

use nmfre_core::{fit, CapRule, Data, FitOptions};

pub const DISTANCE: [f64; 108] = [
    26.0, 25.0, 29.0, 31.0, 21.5, 22.5, 23.0, 26.5, 23.0, 22.5, 24.0, 27.5, 25.5, 27.5, 26.5, 27.0, 20.0, 23.5,
    22.5, 26.0, 24.5, 25.5, 27.0, 28.5, 22.0, 22.0, 24.5, 26.5, 24.0, 21.5, 24.5, 25.5, 23.0, 20.5, 31.0, 26.0,
    27.5, 28.0, 31.0, 31.5, 23.0, 23.0, 23.5, 25.0, 21.5, 23.5, 24.0, 28.0, 17.0, 24.5, 26.0, 29.5, 22.5, 25.5,
    25.5, 26.0, 23.0, 24.5, 26.0, 30.0, 22.0, 21.5, 23.5, 25.0, 21.0, 20.0, 21.5, 23.0, 21.0, 21.5, 24.0, 25.5,
    20.5, 24.0, 24.5, 26.0, 23.5, 24.5, 25.0, 26.5, 21.5, 23.0, 22.5, 23.5, 20.0, 21.0, 21.0, 22.5, 21.5, 22.5,
    23.0, 25.0, 23.0, 23.0, 23.5, 24.0, 20.0, 21.0, 22.0, 21.5, 16.5, 19.0, 19.0, 19.5, 24.5, 25.0, 28.0, 28.0,
];

fn covariates() -> Vec<f64> {
    // Intercept and male indicator; the first 16 subjects are boys.
    (0..27).flat_map(|n| [1.0, if n < 16 { 1.0 } else { 0.0 }]).collect()
}

#[test]
fn orthodont_matches_reference_fit() {
    let a = covariates();
    let data = Data::new(&DISTANCE, 4, 27, &a, 2).unwrap();
    // The published loop alone, as the reference ran it.
    let options = FitOptions { rank: 1, cap: CapRule::Rate(0.21), polish: false, ..FitOptions::default() };
    let result = fit(&data, &options, &mut || false).unwrap();
    assert!(result.converged());
    assert!((result.theta.get(0, 0) - 90.50).abs() < 0.05);
    assert!((result.theta.get(0, 1) - 9.43).abs() < 0.05);
    for (got, want) in result.x.data.iter().zip([0.2308, 0.2409, 0.2566, 0.2717]) {
        assert!((got - want).abs() < 0.001, "X entry {got} differs from {want}");
    }
    assert!((result.dfu - 2.1).abs() < 0.2);
    assert!((200..=260).contains(&result.paper_iterations));
    assert_eq!(result.cap_hits, 0);
}

#[test]
fn orthodont_sandwich_and_bootstrap_match_reference() {
    use nmfre_core::{infer, BootstrapOptions, Conditioning, InferenceOptions, InformationRule, Sigma2Rule, WeightKind};
    let a = covariates();
    let data = Data::new(&DISTANCE, 4, 27, &a, 2).unwrap();
    let options = FitOptions { rank: 1, cap: CapRule::Rate(0.21), ..FitOptions::default() };
    let result = fit(&data, &options, &mut || false).unwrap();
    let conditioning = Conditioning { x: &result.x, theta: &result.theta, u: &result.u, lambda: result.lambda };
    let settings = InferenceOptions {
        sigma2_rule: Sigma2Rule::Corrected,
        information: InformationRule::Corrected,
        bootstrap: Some(BootstrapOptions {
            replicates: 500,
            weights: WeightKind::Exponential,
            seed: 1,
            project: true,
            level: 0.95,
            threads: 1,
        }),
    };
    let inference = infer(&data, &conditioning, &settings, &mut || false).unwrap();
    let se: Vec<f64> = (0..2).map(|i| inference.sandwich.get(i, i).sqrt()).collect();
    let boot = inference.bootstrap.unwrap();
    println!("sandwich se {se:?} boot se {:?} sigma2 {}", boot.se, inference.sigma2);
    // Reference sandwich SE (2.47, 3.06), to 1%.
    assert!((se[0] / 2.47 - 1.0).abs() < 0.01);
    assert!((se[1] / 3.06 - 1.0).abs() < 0.01);
    // Bootstrap SE at B = 500 within 10% of the sandwich values.
    assert!((boot.se[0] / se[0] - 1.0).abs() < 0.10);
    assert!((boot.se[1] / se[1] - 1.0).abs() < 0.10);
}

#[test]
fn orthodont_polished_fit_is_certified() {
    let a = covariates();
    let data = Data::new(&DISTANCE, 4, 27, &a, 2).unwrap();
    let options = FitOptions { rank: 1, cap: CapRule::Rate(0.21), ..FitOptions::default() };
    let result = fit(&data, &options, &mut || false).unwrap();
    assert_eq!(result.stop_reason, nmfre_core::StopReason::Certified);
    assert!(result.kkt_x < 1e-9);
    assert!(result.kkt_theta < 1e-9);
    assert!((result.theta.get(0, 1) - 9.43).abs() < 0.05);
    // sigma2 reaches its fixed point, the mean squared residual.
    assert!((result.sigma2 - result.rss / 108.0).abs() < 1e-8 * result.sigma2);
}
