//! The ideal denoiser against a direct f64 formula, and the reference samplers against the
//! exact Gaussian PF-ODE map and against each other.

use gaussskip::ideal::IdealDenoiser;
use gaussskip::noise::karras_sigmas;
use gaussskip::reference::{rel_error, Gaussian};
use gaussskip::rng::Rng;
use gaussskip::sampler::{
    ddim, ddim_levels, ddpm_alpha_bars, edm_euler, edm_heun, flow_euler, flow_times, Denoiser, Step,
};
use gaussskip::{Context, Error, Model, ModelMeta, Noise};

/// Direct f64 posterior mean: softmax of -‖x - alpha x_i‖² / (2 sigma²) by log-sum-exp.
fn direct_posterior_mean(data: &[f64], dim: usize, x: &[f64], at: Noise) -> Vec<f64> {
    let logits: Vec<f64> = data
        .chunks(dim)
        .map(|xi| {
            let d2: f64 = x
                .iter()
                .zip(xi)
                .map(|(&a, &b)| (a - at.alpha * b).powi(2))
                .sum();
            -d2 / (2.0 * at.sigma * at.sigma)
        })
        .collect();
    let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|&l| (l - top).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut out = vec![0.0; dim];
    for (wi, xi) in w.iter().zip(data.chunks(dim)) {
        for (o, &v) in out.iter_mut().zip(xi) {
            *o += wi / total * v;
        }
    }
    out
}

/// `n` items of dimension `dim` with a common offset, so centring matters.
fn dataset(n: usize, dim: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n * dim)
        .map(|i| 3.0 + (i % dim) as f64 * 0.1 + rng.normal())
        .collect()
}

#[test]
fn ideal_matches_direct_f64_formula() {
    let (n, dim, batch) = (7, 5, 4);
    let data = dataset(n, dim, 1);
    let ideal = IdealDenoiser::<f64>::new(&data, dim).unwrap();
    let ideal32 =
        IdealDenoiser::<f32>::new(&data.iter().map(|&v| v as f32).collect::<Vec<_>>(), dim)
            .unwrap();
    let mut rng = Rng::new(2);
    let levels = [
        Noise::edm(0.3),
        Noise::edm(1.0),
        Noise::edm(5.0),
        Noise::vp(0.7),
        Noise::flow(0.5),
        Noise::new(0.0, 1.0),
    ];
    for at in levels {
        // Noisy versions of data items at this level, so the weights are neither uniform
        // nor one-hot.
        let x: Vec<f64> = (0..batch * dim)
            .map(|i| at.alpha * data[(i % n) * dim + i % dim] + at.sigma * rng.normal())
            .collect();
        let want: Vec<f64> = x
            .chunks(dim)
            .flat_map(|row| direct_posterior_mean(&data, dim, row, at))
            .collect();
        let mut got = vec![f64::NAN; x.len()];
        ideal.denoise(&x, at, &mut got).unwrap();
        let e64 = rel_error(&got, &want);
        assert!(e64 < 1e-12, "f64 at {at:?}: rel error {e64:e}");

        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut got32 = vec![f32::NAN; x.len()];
        ideal32.denoise(&x32, at, &mut got32).unwrap();
        let got32: Vec<f64> = got32.iter().map(|&v| v as f64).collect();
        let e32 = rel_error(&got32, &want);
        assert!(e32 < 1e-5, "f32 at {at:?}: rel error {e32:e}");
    }
}

#[test]
fn ideal_blocks_agree_with_one_block() {
    // Enough items that a batch is split into several blocks (4M logits per block); every
    // block must match the f64 denoiser row by row.
    let (n, dim, batch) = (70_000, 3, 150);
    let data = dataset(n, dim, 3);
    let ideal64 = IdealDenoiser::<f64>::new(&data, dim).unwrap();
    let data32: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    let ideal = IdealDenoiser::new(&data32, dim).unwrap();
    let mut rng = Rng::new(4);
    let x: Vec<f64> = (0..batch * dim).map(|_| 3.0 + 2.0 * rng.normal()).collect();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let at = Noise::edm(0.5);
    let mut all = vec![f32::NAN; x.len()];
    ideal.denoise(&x32, at, &mut all).unwrap();
    let all: Vec<f64> = all.iter().map(|&v| v as f64).collect();
    for (row, got) in x.chunks(dim).zip(all.chunks(dim)).step_by(7) {
        let mut want = vec![f64::NAN; dim];
        ideal64.denoise(row, at, &mut want).unwrap();
        let e = rel_error(got, &want);
        assert!(e < 1e-4, "row {row:?}: rel error {e:e}");
    }
}

#[test]
fn ideal_approaches_data_mean_at_large_sigma() {
    let (n, dim) = (40, 6);
    let data = dataset(n, dim, 5);
    let ideal = IdealDenoiser::<f64>::new(&data, dim).unwrap();
    let mean: Vec<f64> = (0..dim)
        .map(|j| data.iter().skip(j).step_by(dim).sum::<f64>() / n as f64)
        .collect();
    let mut rng = Rng::new(6);
    let eps = rng.normals(dim);
    let mut last = f64::INFINITY;
    for sigma in [10.0, 100.0, 1e3, 1e4] {
        let x: Vec<f64> = eps.iter().map(|&e| sigma * e).collect();
        let mut out = vec![f64::NAN; dim];
        ideal.denoise(&x, Noise::edm(sigma), &mut out).unwrap();
        let dist = rel_error(&out, &mean);
        assert!(
            dist < last,
            "sigma {sigma}: {dist:e} did not shrink from {last:e}"
        );
        last = dist;
    }
    assert!(
        last < 1e-3,
        "at sigma 1e4 the distance to the mean is {last:e}"
    );
    // alpha = 0: x carries no information, the posterior is the prior mean exactly.
    let mut out = vec![f64::NAN; dim];
    ideal.denoise(&eps, Noise::new(0.0, 1.0), &mut out).unwrap();
    assert!(rel_error(&out, &mean) < 1e-14);
    assert!(ideal
        .mean()
        .iter()
        .zip(&mean)
        .all(|(a, b)| (a - b).abs() < 1e-14));
}

#[test]
fn ideal_returns_nearest_item_as_sigma_vanishes() {
    let (n, dim, batch) = (30, 8, 12);
    let data = dataset(n, dim, 7);
    let ideal = IdealDenoiser::<f64>::new(&data, dim).unwrap();
    let mut rng = Rng::new(8);
    let x: Vec<f64> = (0..batch * dim).map(|_| 3.0 + 1.5 * rng.normal()).collect();
    let brute: Vec<usize> = x
        .chunks(dim)
        .map(|row| {
            let d2 = |i: usize| -> f64 {
                row.iter()
                    .zip(&data[i * dim..(i + 1) * dim])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum()
            };
            (0..n)
                .min_by(|&a, &b| d2(a).partial_cmp(&d2(b)).unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(ideal.nearest(&x).unwrap(), brute);
    let mut out = vec![f64::NAN; x.len()];
    ideal.denoise(&x, Noise::edm(0.0), &mut out).unwrap();
    for (row, &i) in out.chunks(dim).zip(&brute) {
        let item = &data[i * dim..(i + 1) * dim];
        assert!(rel_error(row, item) < 1e-14, "sigma = 0 must give item {i}");
    }
    // A tiny sigma gives the same answer through the softmax path.
    ideal.denoise(&x, Noise::edm(1e-4), &mut out).unwrap();
    for (row, &i) in out.chunks(dim).zip(&brute) {
        assert!(rel_error(row, &data[i * dim..(i + 1) * dim]) < 1e-12);
    }
    // With alpha != 1 the nearest item is the one nearest x / alpha.
    let scaled: Vec<f64> = x.iter().map(|&v| 0.5 * v).collect();
    ideal
        .denoise(&scaled, Noise::new(0.5, 0.0), &mut out)
        .unwrap();
    for (row, &i) in out.chunks(dim).zip(&brute) {
        assert!(rel_error(row, &data[i * dim..(i + 1) * dim]) < 1e-14);
    }
}

#[test]
fn ideal_rejects_bad_input_without_writing() {
    assert!(matches!(
        IdealDenoiser::<f32>::new(&[], 3),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        IdealDenoiser::<f32>::new(&[1.0; 7], 3),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        IdealDenoiser::<f32>::new(&[1.0; 6], 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        IdealDenoiser::<f32>::new(&[1.0, f32::NAN, 0.0], 3),
        Err(Error::NonFinite { index: 1, .. })
    ));
    let ideal = IdealDenoiser::<f32>::new(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 3).unwrap();
    let mut out = vec![7.0f32; 3];
    let cases: [(&[f32], Noise, usize); 5] = [
        (&[1.0, 2.0], Noise::edm(1.0), 3),
        (&[1.0, 2.0, 3.0], Noise::edm(1.0), 6),
        (&[1.0, f32::INFINITY, 3.0], Noise::edm(1.0), 3),
        (&[1.0, 2.0, 3.0], Noise::new(0.0, 0.0), 3),
        (&[1.0, 2.0, 3.0], Noise::edm(-1.0), 3),
    ];
    for (x, at, out_len) in cases {
        let mut o = vec![7.0f32; out_len];
        assert!(ideal.denoise(x, at, &mut o).is_err(), "{x:?} {at:?}");
        assert!(o.iter().all(|&v| v == 7.0), "output written on error");
    }
    assert!(ideal.nearest(&[1.0, 2.0]).is_err());
    ideal
        .denoise(&[1.0, 2.0, 3.0], Noise::edm(1.0), &mut out)
        .unwrap();
    assert!(out.iter().all(|v| v.is_finite() && *v != 7.0));
}

/// A Gaussian in `dim` dimensions with random orthonormal modes: `rank` modes with variances
/// spread over four decades, the rest at `residual_var`.
fn gaussian(dim: usize, rank: usize, residual_var: f64, seed: u64) -> Gaussian {
    let mut rng = Rng::new(seed);
    let mut eigvecs: Vec<Vec<f64>> = Vec::new();
    while eigvecs.len() < rank {
        let mut v = rng.normals(dim);
        for u in &eigvecs {
            let p: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(vi, ui)| *vi -= p * ui);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        eigvecs.push(v.iter().map(|a| a / norm).collect());
    }
    Gaussian {
        mean: (0..dim).map(|i| 0.3 * (i as f64).sin()).collect(),
        eigvals: (0..rank)
            .map(|k| 4.0 * 10f64.powf(-4.0 * k as f64 / (rank - 1) as f64))
            .collect(),
        eigvecs,
        residual_var,
    }
}

/// The Gaussian posterior mean, row by row, as a sampler's denoiser.
fn gaussian_denoiser(
    g: &Gaussian,
) -> impl FnMut(&[f64], Noise, &mut [f64]) -> gaussskip::Result<()> + '_ {
    move |x, at, out| {
        for (row, o) in x.chunks(g.dim()).zip(out.chunks_mut(g.dim())) {
            o.copy_from_slice(&g.denoise(row, at));
        }
        Ok(())
    }
}

fn noise_batch(dim: usize, batch: usize, sigma: f64, seed: u64) -> Vec<f64> {
    Rng::new(seed)
        .normals(dim * batch)
        .iter()
        .map(|&e| sigma * e)
        .collect()
}

fn exact_skip(g: &Gaussian, x: &[f64], from: Noise, to: Noise) -> Vec<f64> {
    x.chunks(g.dim())
        .flat_map(|row| g.skip(row, from, to))
        .collect()
}

#[test]
fn heun_on_gaussian_converges_to_the_exact_skip() {
    for (rank, resid) in [(6, 0.0), (4, 0.01)] {
        let g = gaussian(6, rank, resid, 11);
        let x0 = noise_batch(6, 5, 80.0, 12);
        let want = exact_skip(&g, &x0, Noise::edm(80.0), Noise::edm(0.0));
        let mut errors = Vec::new();
        for steps in [18, 36, 72] {
            let sigmas = karras_sigmas(steps, 0.002, 80.0, 7.0).unwrap();
            let mut x = x0.clone();
            let nfe = edm_heun(&mut gaussian_denoiser(&g), &mut x, &sigmas, 0).unwrap();
            assert_eq!(nfe, 2 * steps - 1);
            errors.push(rel_error(&x, &want));
        }
        // Second order: each doubling of the steps cuts the error by about four (measured
        // 4.6e-2, 1.0e-2, 2.4e-3 at full rank: the smallest modes, std 0.02, are what 18
        // steps resolve worst).
        assert!(errors[0] < 6e-2, "rank {rank}: errors {errors:?}");
        assert!(
            errors[1] < errors[0] / 3.0 && errors[2] < errors[1] / 3.0,
            "rank {rank}: errors {errors:?} do not fall like a second-order method"
        );
        // Euler is first order: worse than Heun at equal steps, halving per doubling.
        let mut euler = Vec::new();
        for steps in [36, 72, 144] {
            let sigmas = karras_sigmas(steps, 0.002, 80.0, 7.0).unwrap();
            let mut x = x0.clone();
            assert_eq!(
                edm_euler(&mut gaussian_denoiser(&g), &mut x, &sigmas, 0).unwrap(),
                steps
            );
            euler.push(rel_error(&x, &want));
        }
        eprintln!("rank {rank}: Heun 18/36/72 {errors:?}, Euler 36/72/144 {euler:?}");
        assert!(euler[0] > errors[1], "Euler {euler:?} vs Heun {errors:?}");
        assert!(
            euler[1] < euler[0] / 1.6 && euler[2] < euler[1] / 1.6,
            "Euler errors {euler:?}"
        );
    }
}

/// Records the state at every step it is shown.
struct Recorder<D> {
    inner: D,
    states: Vec<(usize, Vec<f64>)>,
}

impl<D: Denoiser<f64>> Denoiser<f64> for Recorder<D> {
    fn denoise(&mut self, x: &[f64], at: Noise, out: &mut [f64]) -> gaussskip::Result<()> {
        self.inner.denoise(x, at, out)
    }
    fn observe(&mut self, step: Step<'_, f64>) {
        self.states.push((step.index, step.x.to_vec()));
    }
}

#[test]
fn resuming_at_step_k_continues_the_run() {
    let g = gaussian(6, 6, 0.0, 13);
    let sigmas = karras_sigmas(18, 0.002, 80.0, 7.0).unwrap();
    let x0 = noise_batch(6, 4, 80.0, 14);
    let mut rec = Recorder {
        inner: gaussian_denoiser(&g),
        states: Vec::new(),
    };
    let mut full = x0.clone();
    assert_eq!(edm_heun(&mut rec, &mut full, &sigmas, 0).unwrap(), 35);
    let indices: Vec<usize> = rec.states.iter().map(|s| s.0).collect();
    assert_eq!(indices, (0..18).collect::<Vec<_>>());
    let exact_final = exact_skip(&g, &x0, Noise::edm(80.0), Noise::edm(0.0));
    let full_err = rel_error(&full, &exact_final);
    for k in [1, 4, 9, 17] {
        // From the run's own state at step k: the very same tail, bit for bit.
        let mut x = rec.states[k].1.clone();
        let nfe = edm_heun(&mut gaussian_denoiser(&g), &mut x, &sigmas, k).unwrap();
        assert_eq!(nfe, 35 - 2 * k);
        assert_eq!(x, full, "resume at {k}");
        // From the exact jump to sigma_k: the same ODE solution, with fewer numerical steps.
        let mut x = exact_skip(&g, &x0, Noise::edm(80.0), Noise::edm(sigmas[k]));
        edm_heun(&mut gaussian_denoiser(&g), &mut x, &sigmas, k).unwrap();
        let err = rel_error(&x, &exact_final);
        assert!(
            err <= full_err * 1.05,
            "k = {k}: resumed error {err:e} vs full run {full_err:e}"
        );
    }
    // start = last level: nothing left to do.
    let mut x = full.clone();
    assert_eq!(
        edm_heun(&mut gaussian_denoiser(&g), &mut x, &sigmas, 18).unwrap(),
        0
    );
    assert_eq!(x, full);
}

#[test]
fn resume_after_context_skip_in_f32() {
    // The demo's path: the f32 CPU skip from sigma_0 to sigma_k, then Heun from step k.
    let g = gaussian(8, 5, 0.02, 15);
    let model = Model::from_parts(
        g.mean.iter().map(|&v| v as f32).collect(),
        g.eigvals.clone(),
        g.eigvecs.iter().flatten().map(|&v| v as f32).collect(),
        g.residual_var,
        ModelMeta::default(),
    )
    .unwrap();
    let g = Gaussian::from_model(&model);
    let sigmas = karras_sigmas(18, 0.002, 80.0, 7.0).unwrap();
    let x0 = noise_batch(8, 3, 80.0, 16);
    let want = exact_skip(&g, &x0, Noise::edm(80.0), Noise::edm(0.0));
    let x32: Vec<f32> = x0.iter().map(|&v| v as f32).collect();
    let mut den32 =
        |x: &[f32], at: Noise, out: &mut [f32]| Context::cpu().denoise(&model, x, out, at);
    let mut full = x32.clone();
    edm_heun(&mut den32, &mut full, &sigmas, 0).unwrap();
    let full64: Vec<f64> = full.iter().map(|&v| v as f64).collect();
    let full_err = rel_error(&full64, &want);
    for k in [2, 4, 8] {
        let mut x = vec![f32::NAN; x32.len()];
        Context::cpu()
            .skip(
                &model,
                &x32,
                &mut x,
                Noise::edm(80.0),
                Noise::edm(sigmas[k]),
            )
            .unwrap();
        let nfe = edm_heun(&mut den32, &mut x, &sigmas, k).unwrap();
        assert_eq!(nfe, 35 - 2 * k);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let err = rel_error(&x64, &want);
        assert!(
            err <= full_err * 1.05 + 1e-5,
            "k = {k}: {err:e} vs {full_err:e}"
        );
    }
}

#[test]
fn ddim_and_flow_match_edm_euler_after_rescaling() {
    let g = gaussian(7, 7, 0.0, 17);
    let alpha_bars = ddpm_alpha_bars(1000, 1e-4, 0.02).unwrap();
    let levels = ddim_levels(&alpha_bars, 12).unwrap();
    assert_eq!(levels.len(), 13);
    assert_eq!(levels[12], Noise::new(1.0, 0.0));
    assert!((levels[0].alpha.powi(2) - alpha_bars[999]).abs() < 1e-15);
    let x0 = noise_batch(7, 4, levels[0].sigma, 18);

    // DDIM on (alpha, sigma) == EDM Euler on y = x / alpha, sigma / alpha.
    let mut x = x0.clone();
    assert_eq!(
        ddim(&mut gaussian_denoiser(&g), &mut x, &levels, 0).unwrap(),
        12
    );
    let sigmas: Vec<f64> = levels.iter().map(|n| n.sigma / n.alpha).collect();
    let mut y: Vec<f64> = x0.iter().map(|&v| v / levels[0].alpha).collect();
    assert_eq!(
        edm_euler(&mut gaussian_denoiser(&g), &mut y, &sigmas, 0).unwrap(),
        12
    );
    assert!(
        rel_error(&x, &y) < 1e-12,
        "DDIM vs EDM Euler: {:e}",
        rel_error(&x, &y)
    );
    // Resumed at step 5 from the same state, both agree again.
    let mid = exact_skip(&g, &x0, levels[0], levels[5]);
    let mut x = mid.clone();
    assert_eq!(
        ddim(&mut gaussian_denoiser(&g), &mut x, &levels, 5).unwrap(),
        7
    );
    let mut y: Vec<f64> = mid.iter().map(|&v| v / levels[5].alpha).collect();
    edm_euler(&mut gaussian_denoiser(&g), &mut y, &sigmas, 5).unwrap();
    assert!(rel_error(&x, &y) < 1e-12);

    // Flow-matching Euler == DDIM on flow levels, from pure noise (alpha = 0) on.
    let ts = flow_times(12, 3.0).unwrap();
    assert_eq!((ts[0], ts[12]), (1.0, 0.0));
    let flow_levels: Vec<Noise> = ts.iter().map(|&t| Noise::flow(t)).collect();
    let e = noise_batch(7, 4, 1.0, 19);
    let mut a = e.clone();
    let mut b = e.clone();
    assert_eq!(
        flow_euler(&mut gaussian_denoiser(&g), &mut a, &ts, 0).unwrap(),
        12
    );
    ddim(&mut gaussian_denoiser(&g), &mut b, &flow_levels, 0).unwrap();
    assert!(
        rel_error(&a, &b) < 1e-12,
        "flow vs DDIM: {:e}",
        rel_error(&a, &b)
    );
    // ... and == EDM Euler after the first step (sigma / alpha is infinite at t = 1).
    let mut a = exact_skip(&g, &e, flow_levels[0], flow_levels[1]);
    let mut y: Vec<f64> = a.iter().map(|&v| v / flow_levels[1].alpha).collect();
    flow_euler(&mut gaussian_denoiser(&g), &mut a, &ts, 1).unwrap();
    let sig: Vec<f64> = ts[1..].iter().map(|&t| t / (1.0 - t)).collect();
    edm_euler(&mut gaussian_denoiser(&g), &mut y, &sig, 0).unwrap();
    assert!(rel_error(&a, &y) < 1e-12);

    // All of them converge to the exact PF-ODE map as the steps grow.
    let levels = ddim_levels(&alpha_bars, 500).unwrap();
    let x0 = noise_batch(7, 4, levels[0].sigma, 20);
    let want = exact_skip(&g, &x0, levels[0], Noise::new(1.0, 0.0));
    let mut x = x0.clone();
    ddim(&mut gaussian_denoiser(&g), &mut x, &levels, 0).unwrap();
    let e_ddim = rel_error(&x, &want);
    assert!(e_ddim < 1e-2, "DDIM 500 steps: {e_ddim:e}");
    let ts = flow_times(500, 3.0).unwrap();
    let mut x = e.clone();
    flow_euler(&mut gaussian_denoiser(&g), &mut x, &ts, 0).unwrap();
    let want = exact_skip(&g, &e, Noise::flow(1.0), Noise::flow(0.0));
    let e_flow = rel_error(&x, &want);
    assert!(e_flow < 1e-2, "flow 500 steps: {e_flow:e}");
}

#[test]
fn samplers_reject_bad_schedules() {
    let g = gaussian(3, 3, 0.0, 21);
    let mut x = vec![1.0; 3];
    let mut den = gaussian_denoiser(&g);
    assert!(edm_heun(&mut den, &mut x, &[80.0, 10.0, 0.0], 3).is_err());
    assert!(edm_heun(&mut den, &mut x, &[80.0, 90.0, 0.0], 0).is_err());
    assert!(edm_heun(&mut den, &mut x, &[80.0, 0.0, 0.0], 0).is_err());
    assert!(edm_heun(&mut den, &mut x, &[80.0], 0).is_err());
    assert!(edm_euler(&mut den, &mut x, &[80.0, -1.0], 0).is_err());
    assert!(edm_heun(&mut den, &mut Vec::<f64>::new(), &[80.0, 0.0], 0).is_err());
    assert!(flow_euler(&mut den, &mut x, &[1.2, 0.5, 0.0], 0).is_err());
    assert!(flow_euler(&mut den, &mut x, &[1.0, 1.0, 0.0], 0).is_err());
    assert!(ddim(&mut den, &mut x, &[Noise::vp(0.5), Noise::vp(0.4)], 0).is_err());
    assert!(ddim_levels(&[0.9, 0.95], 2).is_err());
    assert!(ddim_levels(&[0.9, 0.5], 3).is_err());
    assert!(ddpm_alpha_bars(1000, 0.02, 1e-4).is_err());
    assert!(flow_times(0, 1.0).is_err());
    assert!(flow_times(4, 0.0).is_err());
    assert_eq!(x, vec![1.0; 3], "a rejected run must not touch the state");
    // A denoiser error stops the run and comes back.
    let mut failing = |_: &[f64], _: Noise, _: &mut [f64]| Err(Error::arg("model", "broken"));
    assert!(matches!(
        edm_heun(&mut failing, &mut x, &[80.0, 0.0], 0),
        Err(Error::InvalidArgument { arg: "model", .. })
    ));
}
