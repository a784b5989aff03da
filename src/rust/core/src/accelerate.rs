//! Extrapolation of the multiplicative updates towards their fixed point.
//!
//! Near a fixed point the updates of X and Theta converge linearly, and
//! slowly when an entry creeps towards or away from the floor. Every third
//! iterate, a squared extrapolation step (SQUAREM, Varadhan and Roland
//! 2008; see Du and Varadhan 2020, Journal of Statistical Software 92(7))
//! is taken in log space, where the updates are multiplicative and
//! positivity is kept for free. With three iterates z0, z1, z2, r = z1 - z0 and v = z2 - 2 z1 + z0, the
//! proposal is z0 - 2 a r + a^2 v with a = -||r|| / ||v||, clamped to
//! [-step_limit, -1]; a = -1 gives z2 itself. The fit loop keeps a proposal
//! only when one of the two iterations after it changes X and Theta less
//! than the iteration before the jump did. The fixed point of the updates
//! is unchanged: only the path to it is shortened.

use crate::dense::Dense;

/// Largest step length tried first; it grows after accepted jumps that
/// used it fully and shrinks after rejected ones.
const INITIAL_STEP_LIMIT: f64 = 4.0;
const MAX_STEP_LIMIT: f64 = 1e4;

pub(crate) struct Extrapolation {
    /// Logs of the last iterates of (X, Theta), oldest first. The buffers
    /// are kept across restarts, so recording allocates only at first use.
    history: [Vec<f64>; 3],
    /// How many entries of `history` contain iterates recorded since the last
    /// restart.
    recorded: usize,
    step_limit: f64,
    /// Whether the last proposal was taken at the step limit.
    at_limit: bool,
}

impl Extrapolation {
    pub(crate) fn new() -> Self {
        Extrapolation {
            history: [Vec::new(), Vec::new(), Vec::new()],
            recorded: 0,
            step_limit: INITIAL_STEP_LIMIT,
            at_limit: false,
        }
    }

    /// Forgets the iterates recorded so far, after a jump or a rejection.
    pub(crate) fn restart(&mut self) {
        self.recorded = 0;
    }

    /// Records the iterate at the end of an iteration.
    pub(crate) fn record(&mut self, x: &Dense, theta: &Dense) {
        if self.recorded == 3 {
            self.history.rotate_left(1);
        } else {
            self.recorded += 1;
        }
        let latest = &mut self.history[self.recorded - 1];
        latest.clear();
        latest.extend(x.data.iter().chain(&theta.data).map(|v| v.ln()));
    }

    /// Once three iterates are recorded and the step is longer than two
    /// plain iterations, writes the extrapolated iterate over `x` and
    /// `theta` (which contain the latest iterate) and returns true.
    ///
    /// Entries on the floor stay where they are. The floor is at most 1.5
    /// `floor`, because normalisation divides it by the column sum of X.
    /// Extrapolated entries are kept above the lowest entry of their block,
    /// so the jump does not lift the floor that the next iteration restores.
    pub(crate) fn propose(&mut self, x: &mut Dense, theta: &mut Dense, floor: f64) -> bool {
        if self.recorded < 3 {
            return false;
        }
        let (z0, z1, z2) = (&self.history[0], &self.history[1], &self.history[2]);
        let (mut r_norm, mut v_norm) = (0.0, 0.0);
        for ((l0, l1), l2) in z0.iter().zip(z1).zip(z2) {
            let r = l1 - l0;
            let v = l2 - 2.0 * l1 + l0;
            r_norm += r * r;
            v_norm += v * v;
        }
        if !(v_norm > 0.0 && r_norm.is_finite() && v_norm.is_finite()) {
            return false;
        }
        let length = (r_norm / v_norm).sqrt().min(self.step_limit);
        if length <= 1.0 {
            return false;
        }

        self.at_limit = length >= self.step_limit;
        let a = -length;
        let mut offset = 0;
        for block in [&mut x.data, &mut theta.data] {
            let lowest = block.iter().fold(floor, |low, &v| low.min(v));
            for (i, value) in block.iter_mut().enumerate() {
                if *value <= 1.5 * floor {
                    continue;
                }
                let (l0, l1, l2) = (z0[offset + i], z1[offset + i], z2[offset + i]);
                let r = l1 - l0;
                let v = l2 - 2.0 * l1 + l0;
                *value = (l0 - 2.0 * a * r + a * a * v).exp().max(lowest);
            }
            offset += block.len();
        }
        self.restart();
        true
    }

    /// Adjusts the step limit after the iteration from a proposal was judged.
    pub(crate) fn judge(&mut self, accepted: bool) {
        if accepted && self.at_limit {
            self.step_limit = (self.step_limit * 4.0).min(MAX_STEP_LIMIT);
        } else if !accepted {
            self.step_limit = (self.step_limit / 4.0).max(INITIAL_STEP_LIMIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_sequence_reaches_limit() {
        // log z_n = 1 + 0.5^n converges to 1 at rate 0.5; one squared step
        // from three iterates lands on the limit exactly.
        let mut extrapolation = Extrapolation::new();
        extrapolation.step_limit = 100.0;
        let (mut x, mut theta) = (Dense::zeros(1, 1), Dense::zeros(1, 1));
        for n in 0..3 {
            x.data[0] = (1.0 + 0.5f64.powi(n)).exp();
            theta.data[0] = (2.0 - 0.5f64.powi(n)).exp();
            extrapolation.record(&x, &theta);
        }
        assert!(extrapolation.propose(&mut x, &mut theta, 1e-10));
        assert!((x.data[0].ln() - 1.0).abs() < 1e-12);
        assert!((theta.data[0].ln() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn short_history_or_step_is_skipped() {
        let mut extrapolation = Extrapolation::new();
        let (mut x, mut theta) = (Dense::filled(2, 1, 1.0), Dense::filled(1, 1, 1.0));
        extrapolation.record(&x, &theta);
        extrapolation.record(&x, &theta);
        assert!(!extrapolation.propose(&mut x, &mut theta, 1e-10));
        // A sequence that oscillates (v large against r) gives a step no
        // longer than two plain iterations, which is not worth a jump.
        let mut extrapolation = Extrapolation::new();
        for value in [1.0f64, 2.0, 1.0] {
            extrapolation.record(&Dense::filled(2, 1, value.exp()), &theta);
        }
        assert!(!extrapolation.propose(&mut x, &mut theta, 1e-10));
    }
}
