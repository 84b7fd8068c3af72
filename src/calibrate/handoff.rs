//! The default criterion's measurement: how far the jump and the sampler each land from the
//! exact trajectory at a hand-off level.
//!
//! The exact state is estimated by Richardson extrapolation from the reference run and the
//! run on the refined schedule (twice the steps, the same levels at even indices): for a
//! sampler of order p, `x* = x_fine + (x_fine − x_ref) / (2^p − 1)`. Both errors are RMS over
//! the whole batch (every draw and coordinate), so a few draws already measure them to a few
//! percent, unlike the final-sample change of a network whose samples change all or nothing.

use super::rms;

/// The errors at one hand-off level (RMS, in the schedule's space).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct HandoffErrors {
    /// The jumped state against the exact state.
    pub jump: f64,
    /// The reference run's state against the exact state: the sampler's own error after the
    /// steps the jump replaces.
    pub sampler: f64,
}

/// The errors of the jumped state `jumped` at a level where the reference run is at `coarse`
/// and the refined run at `fine`, for a sampler of order `order`.
pub(crate) fn errors(jumped: &[f32], coarse: &[f32], fine: &[f32], order: i32) -> HandoffErrors {
    let c = 1.0 / (2f64.powi(order) - 1.0);
    let exact: Vec<f32> = fine
        .iter()
        .zip(coarse)
        .map(|(&f, &r)| (f as f64 + c * (f as f64 - r as f64)) as f32)
        .collect();
    HandoffErrors {
        jump: rms(jumped, &exact),
        sampler: rms(coarse, &exact),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With errors exactly h^p the extrapolation is exact: a jump onto the true state has no
    /// error and the sampler's error is its own.
    #[test]
    fn extrapolation_recovers_the_exact_state() {
        let truth = [1.0f32, -2.0, 0.5];
        for order in [1, 2] {
            let err = [0.04f32, -0.08, 0.02];
            let coarse: Vec<f32> = truth.iter().zip(&err).map(|(t, e)| t + e).collect();
            let scale = 0.5f32.powi(order);
            let fine: Vec<f32> = truth.iter().zip(&err).map(|(t, e)| t + scale * e).collect();
            let e = errors(&truth, &coarse, &fine, order);
            assert!(e.jump < 1e-6, "{e:?}");
            assert!((e.sampler - rms(&coarse, &truth)).abs() < 1e-6, "{e:?}");
        }
    }
}
