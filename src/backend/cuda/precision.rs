//! The CUDA path's own precision bound, checked on the host before any work.
//!
//! Every operation computes out = a mean + b y + U (w .* U^T y) with w_k = gain(lambda_k) -
//! gain(lambda_perp) and b = gain(lambda_perp). The kernels round the weighted projections and
//! the eigenvectors to the storage type, so along mode k the output g_k P_k (g_k = b + w_k the
//! mode's gain) carries an error of about u |w_k| |P_k|: relative to it, u times
//! `kappa = max_k |w_k| / |g_k|`, the amplification of the storage's rounding. Forward jumps, denoising and x0-predictions have
//! kappa <= 1; jumps towards more noise (inversions, renoising) can have kappa >> 1, because b
//! is then the largest gain and the modes' smaller gains are computed as b minus a large w.
//! A call is refused when kappa exceeds [`max_kappa`] of its storage, so every accepted call
//! meets SPEC §5 (2e-3 with f16 eigenvectors, 1e-5 with f32): kernels/emulate checks the
//! contract on accepted calls up to that bound, with rows inside the subspace (the worst case).
//!
//! Every gain is monotone in lambda (skip: sqrt((at^2 l + st^2)/(as^2 l + ss^2)); denoise:
//! a l/(a^2 l + s^2); x0: their product, a l / sqrt((at^2 l + st^2)(as^2 l + ss^2))), and
//! |1 - b/g| is monotone in g, so kappa is attained at lambda_1 or lambda_r: O(1) per level.
//!
//! With r = d there is no direction off the subspace and b is free: the launcher passes the
//! kernels a residual variance (lambda_1 or lambda_r) that makes b the smallest mode gain, so
//! kappa < 1 for every full-rank call, inversions included.
//!
//! The kernels evaluate the gains in f32 (with f64 scalars a, b); levels and eigenvalues are
//! kept where those f32 expressions cannot overflow or underflow.

use crate::context::EigvecStorage;
use crate::error::{Error, Result};
use crate::noise::{Levels, Noise, Op};

/// Largest accepted amplification with f16 eigenvectors (2e-3 contract, unit roundoff 2^-11).
pub(crate) const MAX_KAPPA_F16: f64 = 1.0;
/// Largest accepted amplification with f32 eigenvectors (1e-5 contract, unit roundoff 2^-24).
pub(crate) const MAX_KAPPA_F32: f64 = 32.0;
/// Levels (alpha, sigma) and sqrt(eigenvalues) the kernels' f32 gain expressions carry.
const MAX_SCALE: f64 = 1e18;
const MIN_SCALE: f64 = 1e-18;

/// The bound of a storage type.
pub(crate) fn max_kappa(storage: EigvecStorage) -> f64 {
    match storage {
        EigvecStorage::F16 => MAX_KAPPA_F16,
        EigvecStorage::F32 => MAX_KAPPA_F32,
    }
}

#[derive(Clone, Copy)]
enum Gain {
    Skip,
    Denoise,
    X0,
}

fn gain(kind: Gain, from: Noise, to: Noise, lambda: f64) -> f64 {
    match kind {
        Gain::Denoise => to.denoise_gain(lambda),
        Gain::Skip => to.marginal_std(lambda) / from.marginal_std(lambda),
        Gain::X0 => to.denoise_gain(lambda) * to.marginal_std(lambda) / from.marginal_std(lambda),
    }
}

/// Amplification of one (from, to) pair for eigenvalues in [lo, hi] and residual `perp`.
fn kappa_of(kind: Gain, from: Noise, to: Noise, lo: f64, hi: f64, perp: f64) -> f64 {
    let b = gain(kind, from, to, perp);
    [lo, hi]
        .iter()
        .map(|&l| {
            let g = gain(kind, from, to, l);
            let w = g - b;
            match (w / g).abs() {
                _ if w == 0.0 => 0.0,
                k if k.is_nan() => f64::INFINITY,
                k => k,
            }
        })
        .fold(0.0, f64::max)
}

/// How a call will run: its amplification and the residual variance the kernels get.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Conditioning {
    pub kappa: f64,
    pub residual_var: f64,
}

fn pairs<'a>(op: &Op<'a>, rows: usize) -> (Gain, Vec<(Noise, Noise)>) {
    let level = |l: &Levels<'_>, i: usize| match l {
        Levels::One(n) => *n,
        Levels::PerRow(v) => v[i],
    };
    let per_row = |l: &Levels<'_>| matches!(l, Levels::PerRow(_));
    let pure_noise = Noise::new(0.0, 1.0);
    match *op {
        Op::Skip { from, to } => {
            let n = if per_row(&from) || per_row(&to) {
                rows
            } else {
                1
            };
            (
                Gain::Skip,
                (0..n).map(|i| (level(&from, i), level(&to, i))).collect(),
            )
        }
        Op::Denoise { at } => {
            let n = if per_row(&at) { rows } else { 1 };
            (
                Gain::Denoise,
                (0..n).map(|i| (pure_noise, level(&at, i))).collect(),
            )
        }
        Op::SkipTrajectory { from, levels } | Op::X0Trajectory { from, levels } => {
            let kind = if matches!(op, Op::X0Trajectory { .. }) {
                Gain::X0
            } else {
                Gain::Skip
            };
            let n = if per_row(&from) { rows } else { 1 };
            let mut v = Vec::with_capacity(n * levels.len());
            for i in 0..n {
                for &t in levels {
                    v.push((level(&from, i), t));
                }
            }
            (kind, v)
        }
    }
}

fn in_range(v: f64) -> bool {
    v == 0.0 || (MIN_SCALE..=MAX_SCALE).contains(&v)
}

/// Checks a validated call against the CUDA path's bound and picks the residual variance for
/// the kernels.
///
/// # Errors
/// `InvalidNoise` when the amplification exceeds the storage's bound, or a level is outside
/// what the kernels' f32 gains carry.
pub(crate) fn condition(
    op: &Op<'_>,
    rows: usize,
    eigvals: &[f64],
    residual_var: f64,
    full_rank: bool,
    storage: EigvecStorage,
) -> Result<Conditioning> {
    let (kind, pairs) = pairs(op, rows);
    let (hi, lo) = (eigvals[0], eigvals[eigvals.len() - 1]);
    for &(f, t) in &pairs {
        for n in [f, t] {
            if !in_range(n.alpha) || !in_range(n.sigma) || !in_range(n.alpha * hi.sqrt()) {
                return Err(Error::InvalidNoise {
                    arg: "levels",
                    alpha: n.alpha,
                    sigma: n.sigma,
                    reason: "a CUDA context computes gains in f32 and takes alpha, sigma and alpha*sqrt(eigval) of 0 or between 1e-18 and 1e18; use the CPU for this level".into(),
                });
            }
        }
    }
    // (amplification, index of the pair that attains it) for a residual variance
    let worst = |perp: f64| {
        pairs
            .iter()
            .enumerate()
            .map(|(i, &(f, t))| (kappa_of(kind, f, t, lo, hi, perp), i))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
    };
    let ((kappa, at), residual_var) = if full_rank {
        let a = worst(lo);
        let b = worst(hi);
        if a.0 <= b.0 {
            (a, lo)
        } else {
            (b, hi)
        }
    } else {
        (worst(residual_var), residual_var)
    };
    if kappa > max_kappa(storage) {
        let t = pairs[at].1;
        return Err(Error::InvalidNoise {
            arg: "to",
            alpha: t.alpha,
            sigma: t.sigma,
            reason: match storage {
                EigvecStorage::F16 => format!("this jump towards more noise amplifies the rounding of f16 eigenvectors by {kappa:.3} (max|w_k|/|g_k|, above 1 it breaks the 2e-3 contract; see the README's CUDA precision bound); use a CUDA context with f32 eigenvector storage, or the CPU"),
                EigvecStorage::F32 => format!("this jump towards more noise amplifies f32 rounding by {kappa:.3} (max|w_k|/|g_k|, above 32 it breaks the 1e-5 contract; see the README's CUDA precision bound); use the CPU"),
            },
        });
    }
    Ok(Conditioning {
        kappa,
        residual_var,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECTRUM: [f64; 4] = [20.0, 5.0, 0.3, 0.01];

    fn skip(from: f64, to: f64) -> Op<'static> {
        Op::Skip {
            from: Noise::edm(from).into(),
            to: Noise::edm(to).into(),
        }
    }

    fn dense_kappa(kind: Gain, from: Noise, to: Noise, perp: f64) -> f64 {
        // the definition, over a fine grid of eigenvalues between the extremes
        let b = gain(kind, from, to, perp);
        (0..=2000)
            .map(|i| 0.01 * (20.0f64 / 0.01).powf(i as f64 / 2000.0))
            .map(|l| {
                let g = gain(kind, from, to, l);
                if g == b {
                    0.0
                } else {
                    ((g - b) / g).abs()
                }
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn the_extremes_give_the_amplification_of_every_eigenvalue_between() {
        for (kind, f, t) in [
            (Gain::Skip, Noise::edm(80.0), Noise::edm(3.0)),
            (Gain::Skip, Noise::edm(0.5), Noise::edm(80.0)),
            (Gain::Skip, Noise::vp(0.9), Noise::flow(0.7)),
            (Gain::Denoise, Noise::new(0.0, 1.0), Noise::vp(0.3)),
            (Gain::X0, Noise::edm(0.2), Noise::edm(40.0)),
            (Gain::X0, Noise::flow(0.99), Noise::flow(0.2)),
        ] {
            for perp in [0.0, 0.005, 3.0] {
                let fast = kappa_of(kind, f, t, 0.01, 20.0, perp);
                let dense = dense_kappa(kind, f, t, perp);
                assert!(
                    (fast - dense).abs() <= 1e-9 * dense.max(1.0),
                    "{fast} vs {dense}"
                );
            }
        }
    }

    #[test]
    fn forward_jumps_and_denoising_are_accepted_on_f16() {
        for op in [
            skip(80.0, 10.0),
            skip(80.0, 0.0),
            Op::Denoise {
                at: Noise::vp(0.4).into(),
            },
        ] {
            let c = condition(&op, 1, &SPECTRUM, 0.005, false, EigvecStorage::F16).unwrap();
            assert!(c.kappa <= 1.0, "{op:?}: {}", c.kappa);
            assert_eq!(c.residual_var, 0.005);
        }
    }

    #[test]
    fn renoising_a_low_rank_model_is_refused_on_f16_and_f32_where_it_is_too_large() {
        let op = skip(0.002, 80.0);
        let e = condition(&op, 1, &SPECTRUM, 0.0, false, EigvecStorage::F16).unwrap_err();
        assert!(matches!(e, Error::InvalidNoise { arg: "to", .. }), "{e}");
        assert!(e.to_string().contains("f32 eigenvector storage"), "{e}");
        let e = condition(&op, 1, &SPECTRUM, 0.0, false, EigvecStorage::F32).unwrap_err();
        assert!(e.to_string().contains("use the CPU"), "{e}");
        // a mild inversion passes with f32 eigenvectors
        let c = condition(
            &skip(2.0, 80.0),
            1,
            &SPECTRUM,
            0.0,
            false,
            EigvecStorage::F32,
        )
        .unwrap();
        assert!(c.kappa > 1.0 && c.kappa <= MAX_KAPPA_F32, "{}", c.kappa);
    }

    #[test]
    fn full_rank_inversions_pick_the_residual_that_keeps_the_amplification_below_one() {
        for (f, t) in [(0.002, 80.0), (80.0, 0.002), (1.0, 1.0)] {
            let c = condition(&skip(f, t), 1, &SPECTRUM, 0.0, true, EigvecStorage::F16).unwrap();
            assert!(c.kappa < 1.0, "{f}->{t}: {}", c.kappa);
            assert!(c.residual_var == 20.0 || c.residual_var == 0.01);
        }
        // inversion: the largest eigenvalue has the smallest gain
        let c = condition(
            &skip(0.002, 80.0),
            1,
            &SPECTRUM,
            0.0,
            true,
            EigvecStorage::F16,
        )
        .unwrap();
        assert_eq!(c.residual_var, 20.0);
    }

    #[test]
    fn per_row_levels_take_the_worst_row() {
        let from = [Noise::edm(80.0), Noise::edm(0.01)];
        let to = [Noise::edm(10.0), Noise::edm(80.0)];
        let op = Op::Skip {
            from: Levels::PerRow(&from),
            to: Levels::PerRow(&to),
        };
        assert!(condition(&op, 2, &SPECTRUM, 0.0, false, EigvecStorage::F16).is_err());
        let to = [Noise::edm(10.0), Noise::edm(0.001)];
        let op = Op::Skip {
            from: Levels::PerRow(&from),
            to: Levels::PerRow(&to),
        };
        assert!(condition(&op, 2, &SPECTRUM, 0.0, false, EigvecStorage::F16).is_ok());
    }

    #[test]
    fn levels_outside_the_f32_range_of_the_kernels_are_refused() {
        for op in [skip(1e20, 1.0), skip(1.0, 1e-19)] {
            let e = condition(&op, 1, &SPECTRUM, 0.0, false, EigvecStorage::F32).unwrap_err();
            assert!(e.to_string().contains("gains in f32"), "{e}");
        }
        assert!(condition(
            &skip(80.0, 0.0),
            1,
            &SPECTRUM,
            0.0,
            false,
            EigvecStorage::F32
        )
        .is_ok());
    }
}
