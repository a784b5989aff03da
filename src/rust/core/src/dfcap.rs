//! Effective degrees of freedom of the random effects and the df cap.
//!
//! With `d_1..d_Q` the eigenvalues of X'X, the ridge solution for U uses
//! `dfU(lambda) = N * sum_q d_q / (d_q + lambda)` degrees of freedom. The cap
//! keeps dfU at or below a ceiling by raising lambda, so that the random
//! effects cannot absorb the residual variance.

use crate::error::{NmfreError, Result};

/// Largest ridge penalty the root search will consider.
pub const LAMBDA_MAX: f64 = 1e12;
/// Absolute tolerance, in lambda, of the bracketing root search.
pub const LAMBDA_TOLERANCE: f64 = 1e-8;

/// Rule that sets the ceiling on dfU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CapRule {
    /// No ceiling; tau2 follows its own update.
    Off,
    /// Ceiling `max(rate * N * Q, 1)`.
    Rate(f64),
    /// Ceiling given directly in degrees of freedom.
    Absolute(f64),
}

impl CapRule {
    /// Returns the ceiling on dfU for `units` units and `rank` bases, or None when off.
    pub fn ceiling(&self, units: usize, rank: usize) -> Option<f64> {
        match *self {
            CapRule::Off => None,
            CapRule::Rate(rate) => Some((rate * units as f64 * rank as f64).max(1.0)),
            CapRule::Absolute(cap) => Some(cap),
        }
    }

    /// Checks that the rate or the absolute ceiling is usable.
    pub fn validate(&self) -> Result<()> {
        match *self {
            CapRule::Off => Ok(()),
            CapRule::Rate(rate) if rate.is_finite() && rate > 0.0 => Ok(()),
            CapRule::Absolute(cap) if cap.is_finite() && cap > 0.0 => Ok(()),
            CapRule::Rate(rate) => Err(NmfreError::InvalidInput(format!(
                "df cap rate must be a positive finite number, not {rate}"
            ))),
            CapRule::Absolute(cap) => Err(NmfreError::InvalidInput(format!(
                "absolute df cap must be a positive finite number, not {cap}"
            ))),
        }
    }
}

/// Computes `dfU(lambda) = units * sum_q d_q / (d_q + lambda)`.
pub fn effective_df(eigenvalues: &[f64], lambda: f64, units: usize) -> f64 {
    let trace: f64 = eigenvalues
        .iter()
        .map(|&d| {
            let d = d.max(0.0);
            if d + lambda > 0.0 {
                d / (d + lambda)
            } else {
                0.0
            }
        })
        .sum();
    units as f64 * trace
}

/// Outcome of raising lambda to meet the cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapSolution {
    /// The raised penalty; dfU at this value is at or just below the cap.
    pub lambda: f64,
    /// False when even `LAMBDA_MAX` leaves dfU above the cap.
    pub reached: bool,
}

/// Finds the lambda above `lambda` at which dfU equals `cap`.
///
/// dfU decreases in lambda, so the root is bracketed by multiplying lambda by
/// 10 (from 1e-6 when it is 0) until dfU falls to the cap, then located by
/// bisection to `LAMBDA_TOLERANCE`. Bisection is used rather than a faster
/// secant method because it keeps the returned end of the bracket on the
/// feasible side, so dfU never exceeds the cap by rounding.
pub fn raise_lambda_to_cap(eigenvalues: &[f64], lambda: f64, units: usize, cap: f64) -> CapSolution {
    raise_lambda_to_cap_within(eigenvalues, lambda, units, cap, LAMBDA_TOLERANCE)
}

/// Same as [`raise_lambda_to_cap`] with an absolute `tolerance` in lambda.
/// Polishing uses a tolerance near rounding, because a root found only to
/// 1e-8 moves lambda, and so sigma2, by more than the stationarity test
/// allows from one iteration to the next.
pub fn raise_lambda_to_cap_within(
    eigenvalues: &[f64],
    lambda: f64,
    units: usize,
    cap: f64,
    tolerance: f64,
) -> CapSolution {
    let df = |value: f64| effective_df(eigenvalues, value, units);
    if df(lambda) <= cap {
        return CapSolution { lambda, reached: true };
    }

    let mut low = lambda.max(0.0);
    let mut high = if low > 0.0 { low * 10.0 } else { 1e-6 };
    while df(high) > cap {
        if high >= LAMBDA_MAX {
            return CapSolution { lambda: LAMBDA_MAX, reached: false };
        }
        low = high;
        high = (high * 10.0).min(LAMBDA_MAX);
    }

    // The bisection below needs only the side of the root each midpoint
    // falls on. Away from the root, a root found by Newton's method gives
    // that side without evaluating dfU. Near it, dfU is evaluated as
    // before, so the result is the same as plain bisection.
    let guide = NewtonRoot::find(eigenvalues, units, cap, low, high);
    while high - low > tolerance {
        let middle = 0.5 * (low + high);
        if middle <= low || middle >= high {
            break;
        }
        let above_cap = match guide.side(middle) {
            Some(below_root) => below_root,
            None => df(middle) > cap,
        };
        if above_cap {
            low = middle;
        } else {
            high = middle;
        }
    }
    CapSolution { lambda: high, reached: true }
}

/// A root of `dfU(lambda) = cap` from Newton's method, with the distance
/// from it within which the side of a point is uncertain.
struct NewtonRoot {
    root: f64,
    margin: f64,
}

impl NewtonRoot {
    /// Newton's method from `low`, where dfU > cap. dfU is decreasing and
    /// convex in lambda, so the iterates rise towards the root without
    /// passing it. Without convergence the margin is infinite, so that
    /// every side is evaluated.
    fn find(eigenvalues: &[f64], units: usize, cap: f64, low: f64, high: f64) -> Self {
        let units = units as f64;
        let value_and_slope = |lambda: f64| {
            let (mut value, mut slope) = (0.0, 0.0);
            for &d in eigenvalues {
                let d = d.max(0.0);
                if d + lambda > 0.0 {
                    let share = d / (d + lambda);
                    value += share;
                    slope -= share / (d + lambda);
                }
            }
            (units * value - cap, units * slope)
        };
        let mut lambda = low;
        for _ in 0..100 {
            let (value, slope) = value_and_slope(lambda);
            if !(slope < 0.0) || !value.is_finite() {
                break;
            }
            let step = -value / slope;
            lambda = (lambda + step).min(high);
            if step.abs() <= 1e-15 * lambda {
                // Rounding in dfU, about 1e-16 relative per term, moves its
                // sign change by up to that error over the slope. A thousand
                // times that, plus the last step, is a safe margin.
                let rounding = 1e-16 * (eigenvalues.len() as f64 + 1.0) * cap.abs() / -slope;
                return NewtonRoot { root: lambda, margin: 1e3 * rounding + 1e3 * step.abs() + 1e-13 * lambda };
            }
        }
        NewtonRoot { root: lambda, margin: f64::INFINITY }
    }

    /// Returns whether `lambda` lies below the root (where dfU > cap), or
    /// None when it is too close to the root to tell without evaluating dfU.
    fn side(&self, lambda: f64) -> Option<bool> {
        if (lambda - self.root).abs() > self.margin {
            Some(lambda < self.root)
        } else {
            None
        }
    }
}

/// Finds the lambda at which dfU equals `cap`, searching up or down from
/// `lambda`. Used while polishing a fit whose cap binds, so that dfU stays
/// on the cap as X moves instead of drifting below it.
pub fn lambda_at_cap(eigenvalues: &[f64], lambda: f64, units: usize, cap: f64) -> CapSolution {
    let df = |value: f64| effective_df(eigenvalues, value, units);
    if df(lambda) > cap {
        return raise_lambda_to_cap(eigenvalues, lambda, units, cap);
    }
    // dfU is at or below the cap: lower lambda until it exceeds the cap.
    let mut high = lambda;
    let mut low = lambda / 10.0;
    while df(low) <= cap {
        if low < 1e-300 {
            return CapSolution { lambda: high, reached: false };
        }
        high = low;
        low /= 10.0;
    }
    raise_lambda_to_cap(eigenvalues, low, units, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_df_limits() {
        let eigenvalues = [2.0, 0.5];
        assert_eq!(effective_df(&eigenvalues, 0.0, 10), 20.0);
        assert!(effective_df(&eigenvalues, 1e12, 10) < 1e-9);
        // 10 * (2/3 + 0.5/1.5) = 10
        assert!((effective_df(&eigenvalues, 1.0, 10) - 10.0).abs() < 1e-12);
    }

    #[test]
    fn root_search_meets_cap() {
        let eigenvalues = [3.0, 1.0, 0.2];
        let units = 50;
        for &(start, cap) in &[(0.0, 30.0), (1e-3, 5.0), (0.5, 80.0), (2.0, 1.0)] {
            let solution = raise_lambda_to_cap(&eigenvalues, start, units, cap);
            assert!(solution.reached);
            assert!(solution.lambda >= start);
            let df = effective_df(&eigenvalues, solution.lambda, units);
            assert!(df <= cap + 1e-12, "dfU {df} above cap {cap}");
            // The root lies within LAMBDA_TOLERANCE below the returned lambda.
            let below = effective_df(&eigenvalues, solution.lambda - LAMBDA_TOLERANCE, units);
            assert!(below > cap, "root not bracketed to tolerance: {below} <= {cap}");
        }
    }

    /// Plain bisection, as the method states it, for comparison with the
    /// search guided by Newton's method.
    fn plain_bisection(eigenvalues: &[f64], lambda: f64, units: usize, cap: f64, tolerance: f64) -> f64 {
        let df = |value: f64| effective_df(eigenvalues, value, units);
        let mut low = lambda.max(0.0);
        let mut high = if low > 0.0 { low * 10.0 } else { 1e-6 };
        while df(high) > cap {
            low = high;
            high *= 10.0;
        }
        while high - low > tolerance {
            let middle = 0.5 * (low + high);
            if middle <= low || middle >= high {
                break;
            }
            if df(middle) > cap {
                low = middle;
            } else {
                high = middle;
            }
        }
        high
    }

    #[test]
    fn guided_bisection_matches_plain_bisection() {
        // Spread eigenvalues, caps near saturation (lambda far below the
        // eigenvalues, where dfU barely moves) and far from it, and both
        // tolerances the fit uses.
        let mut cases = 0;
        for eigenvalues in [vec![3.0, 1.0, 0.2], vec![1e4, 2e3, 5e2, 1.0], vec![0.49, 0.5, 0.51], vec![1e-6, 1.0]] {
            for units in [27, 301, 10_000] {
                let full = units as f64 * eigenvalues.len() as f64;
                for share in [0.05, 0.21, 0.5, 0.96, 0.999, 0.999999] {
                    for start in [0.0, 1e-9, 1e-3, 0.7] {
                        for tolerance in [LAMBDA_TOLERANCE, 1e-14] {
                            let cap = share * full;
                            let expected = plain_bisection(&eigenvalues, start, units, cap, tolerance);
                            let solution = raise_lambda_to_cap_within(&eigenvalues, start, units, cap, tolerance);
                            if effective_df(&eigenvalues, start, units) > cap {
                                assert_eq!(solution.lambda.to_bits(), expected.to_bits(), "{eigenvalues:?} {units} {cap} {start}");
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(cases > 300, "only {cases} cases raised lambda");
    }

    #[test]
    fn lambda_at_cap_searches_both_ways() {
        let eigenvalues = [3.0, 1.0, 0.2];
        for start in [1e-4, 0.5, 50.0] {
            let solution = lambda_at_cap(&eigenvalues, start, 50, 30.0);
            assert!(solution.reached);
            let df = effective_df(&eigenvalues, solution.lambda, 50);
            assert!(df <= 30.0 + 1e-12, "start {start}: dfU {df} above the cap");
            assert!(30.0 - df < 1e-6, "start {start}: dfU {df} below the cap");
        }
    }

    #[test]
    fn root_search_leaves_feasible_lambda_alone() {
        let solution = raise_lambda_to_cap(&[1.0], 5.0, 10, 5.0);
        assert_eq!(solution.lambda, 5.0);
    }

    #[test]
    fn cap_from_rate_has_floor_of_one() {
        assert_eq!(CapRule::Rate(0.1).ceiling(3, 1), Some(1.0));
        assert_eq!(CapRule::Rate(0.21).ceiling(27, 1), Some(0.21 * 27.0));
        assert_eq!(CapRule::Off.ceiling(27, 1), None);
    }
}
