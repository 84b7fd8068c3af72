//! The CPU backend's element-wise row passes: centring (with the row's measures), weighing
//! the projections (with their sums), and the epilogue `out += a mean + b y`.
//!
//! Each pass is written once, as plain loops over fixed-width chunks with independent f64
//! sums per lane, and compiled also with AVX2 ([`crate::simd::dispatch`]).

use crate::dtype::Element;
use crate::sampler::Real;
use crate::simd::dispatch;

/// Independent sums per row pass: one running f64 sum would make each element wait for the
/// previous addition (its latency, not the arithmetic, sets the time of these passes).
const LANES: usize = 8;

/// Per-row measures of y = x - c mean.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct RowNorms {
    /// ‖y‖₂.
    pub l2: f64,
    /// max |y_i|.
    pub max: f64,
    /// First index of a NaN/Inf in the row of x.
    pub bad: Option<usize>,
}

/// `y = x - c mean` for one row, and its measures (`bad`: the first NaN/Inf of `x` in the
/// row). With a NaN/Inf in `x` the contents of `y` are unspecified.
pub(super) fn centre_row<T: Element, F: Real>(
    x: &[T],
    mean: &[f32],
    c: F,
    y: &mut [F],
) -> RowNorms {
    let (l2, max) = dispatch(
        #[inline(always)]
        || centre_sums(x, mean, c, y),
    );
    // A finite row of x has a finite sum of squares in f64 (below 1e77 per element).
    let bad = if l2.is_finite() {
        None
    } else {
        x.iter().position(|v| !v.to_f32().is_finite())
    };
    RowNorms {
        l2: l2.sqrt(),
        max,
        bad,
    }
}

#[inline(always)]
fn centre_sums<T: Element, F: Real>(x: &[T], mean: &[f32], c: F, y: &mut [F]) -> (f64, f64) {
    let mut sums = [[0f64; LANES]; 2];
    let mut xa = [0f32; LANES];
    let mut ys = y.chunks_exact_mut(LANES);
    let mut xs = x.chunks_exact(LANES);
    let mut ms = mean.chunks_exact(LANES);
    for ((yc, xc), mc) in (&mut ys).zip(&mut xs).zip(&mut ms) {
        for l in 0..LANES {
            xa[l] = xc[l].to_f32();
        }
        centre_chunk(
            &xa,
            mc.try_into().unwrap(),
            c,
            yc.try_into().unwrap(),
            &mut sums,
        );
    }
    let yt = ys.into_remainder();
    if !yt.is_empty() {
        let n = yt.len();
        let (mut ma, mut ya) = ([0f32; LANES], [F::from_f64(0.0); LANES]);
        xa = [0f32; LANES];
        for (l, (xv, &m)) in xs.remainder().iter().zip(ms.remainder()).enumerate() {
            (xa[l], ma[l]) = (xv.to_f32(), m);
        }
        centre_chunk(&xa, &ma, c, &mut ya, &mut sums);
        yt.copy_from_slice(&ya[..n]);
    }
    let [l2, max] = sums;
    (l2.iter().sum(), max.iter().fold(0f64, |a, &b| a.max(b)))
}

/// One chunk of `centre_sums`: every index into the sums is a constant (the tail is padded
/// with zeros, which add nothing), so they stay in registers.
#[inline(always)]
fn centre_chunk<F: Real>(
    x: &[f32; LANES],
    mean: &[f32; LANES],
    c: F,
    y: &mut [F; LANES],
    [l2, max]: &mut [[f64; LANES]; 2],
) {
    for l in 0..LANES {
        let v = F::from_f64(f64::from(x[l])) - c * F::from_f64(f64::from(mean[l]));
        let a = v.to_f64().abs();
        l2[l] += a * a;
        max[l] = max[l].max(a);
        y[l] = v;
    }
}

/// For one row of projections `p` and its weights `w`: `p = p w` in place (rounded to `F`),
/// and Σ ((w_k + b) p_k)² and Σ p_k² of the projections in f64.
pub(super) fn weigh_row<F: Real>(p: &mut [F], w: &[f64], b: f64) -> (f64, f64) {
    dispatch(
        #[inline(always)]
        || weigh_sums(p, w, b),
    )
}

#[inline(always)]
fn weigh_sums<F: Real>(p: &mut [F], w: &[f64], b: f64) -> (f64, f64) {
    let mut sums = [[0f64; LANES]; 2];
    let mut ps = p.chunks_exact_mut(LANES);
    let mut ws = w.chunks_exact(LANES);
    for (pc, wc) in (&mut ps).zip(&mut ws) {
        weigh_chunk(pc.try_into().unwrap(), wc.try_into().unwrap(), b, &mut sums);
    }
    let pt = ps.into_remainder();
    if !pt.is_empty() {
        let n = pt.len();
        let (mut pa, mut wa) = ([F::from_f64(0.0); LANES], [0f64; LANES]);
        pa[..n].copy_from_slice(pt);
        wa[..n].copy_from_slice(ws.remainder());
        weigh_chunk(&mut pa, &wa, b, &mut sums);
        pt.copy_from_slice(&pa[..n]);
    }
    let [on, p2] = sums;
    (on.iter().sum(), p2.iter().sum())
}

/// One chunk of `weigh_sums` (as `centre_chunk`).
#[inline(always)]
fn weigh_chunk<F: Real>(
    p: &mut [F; LANES],
    w: &[f64; LANES],
    b: f64,
    [on, p2]: &mut [[f64; LANES]; 2],
) {
    for l in 0..LANES {
        let pf = p[l].to_f64();
        let g = (w[l] + b) * pf;
        on[l] += g * g;
        p2[l] += pf * pf;
        p[l] *= F::from_f64(w[l]);
    }
}

/// `dst += a mean + b y` for one output row.
pub(super) fn epilogue_row<F: Real>(dst: &mut [F], y: &[F], mean: &[f32], a: F, b: F) {
    dispatch(
        #[inline(always)]
        || {
            for ((o, &yv), &m) in dst.iter_mut().zip(y).zip(mean) {
                *o += a * F::from_f64(f64::from(m)) + b * yv;
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The passes against plain f64 sums, for both compilations where the CPU has AVX2 (the
    /// same bits), lengths around the chunk width, f32 and f64.
    #[test]
    fn passes_match_plain_sums_in_both_compilations() {
        let mut rng = Rng::new(7);
        for n in [0, 1, 15, 16, 17, 40, 784, 1001] {
            let x: Vec<f32> = rng.normals(n).iter().map(|&v| (v * 3.0) as f32).collect();
            let mean: Vec<f32> = rng.normals(n).iter().map(|&v| v as f32).collect();
            let w: Vec<f64> = rng.normals(n);
            let c = 0.75f32;
            let mut y = vec![0f32; n];
            let norms = centre_row(&x, &mean, c, &mut y);
            let want: Vec<f32> = x.iter().zip(&mean).map(|(&x, &m)| x - c * m).collect();
            assert_eq!(y, want, "n {n}");
            let l2 = want
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum::<f64>()
                .sqrt();
            let max = want.iter().fold(0f64, |a, &v| a.max(f64::from(v).abs()));
            assert!((norms.l2 - l2).abs() <= 1e-12 * l2, "n {n}");
            assert_eq!((norms.max, norms.bad), (max, None), "n {n}");

            let mut p = y.clone();
            let (on, p2) = weigh_row(&mut p, &w, 0.5);
            for ((&pv, &yv), &wv) in p.iter().zip(&y).zip(&w) {
                assert_eq!(pv, yv * wv as f32, "n {n}");
            }
            let on_want: f64 = y
                .iter()
                .zip(&w)
                .map(|(&v, &w)| ((w + 0.5) * f64::from(v)).powi(2))
                .sum();
            assert!((on - on_want).abs() <= 1e-12 * on_want, "n {n}");
            assert!((p2 - l2 * l2).abs() <= 1e-12 * p2, "n {n}");

            let mut out = p.clone();
            epilogue_row(&mut out, &y, &mean, 2.0, 0.25);
            for i in 0..n {
                assert_eq!(out[i], p[i] + (2.0 * mean[i] + 0.25 * y[i]), "n {n}");
            }

            // The baseline compilation gives the same bits as the dispatched one.
            let mut y0 = vec![0f32; n];
            let sums = centre_sums(&x, &mean, c, &mut y0);
            assert_eq!((sums.0.sqrt(), sums.1), (norms.l2, norms.max), "n {n}");
            assert_eq!(y0, y);
            let mut p0 = y.clone();
            assert_eq!(weigh_sums(&mut p0, &w, 0.5), (on, p2), "n {n}");
            assert_eq!(p0, p);
        }
    }

    /// A NaN or an infinity anywhere in a row is found, at its first index.
    #[test]
    fn centring_finds_the_first_non_finite_value() {
        for n in [1, 16, 33, 784] {
            for at in [0, n / 2, n - 1] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut x = vec![1f32; n];
                    x[at] = bad;
                    if at + 1 < n {
                        x[n - 1] = f32::NAN;
                    }
                    let mut y = vec![0f32; n];
                    let norms = centre_row(&x, &vec![0.5; n], 1f32, &mut y);
                    assert_eq!(norms.bad, Some(at), "n {n} at {at} {bad}");
                }
            }
        }
    }
}
