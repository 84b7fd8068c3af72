//! Hand-off calibration (`gaussskip::calibrate`): the choice on the bundled MNIST ideal model
//! validated on fresh noise, exactness on Gaussian data, the stored form, and errors.

use gaussskip::calibrate::{
    calibrate, calibrated_k, refined, with_calibration, Calibrations, Options, Sampler, Tolerance,
};
use gaussskip::demo::{fit, load_csv, BUNDLED_DATA};
use gaussskip::ideal::IdealDenoiser;
use gaussskip::noise::karras_sigmas;
use gaussskip::rng::Rng;
use gaussskip::sampler::edm_heun;
use gaussskip::{Context, Error, Model, ModelMeta, Noise};

fn edm(sigmas: &[f64]) -> Vec<Noise> {
    sigmas.iter().map(|&s| Noise::edm(s)).collect()
}

fn noise(rows: usize, dim: usize, sigma: f64, seed: u64) -> Vec<f32> {
    Rng::new(seed)
        .normals(rows * dim)
        .into_iter()
        .map(|e| (sigma * e) as f32)
        .collect()
}

/// The issue's validation over several calibration seeds, none picked: each of seeds 1..=6
/// (32 draws) calibrates EDM Heun 18 steps with the default rule, and every chosen k keeps at
/// least 98 % of 64 fresh draws (seed 1000) nearest the same training image as without the
/// jump. Not timid: the jump is exact to about k = 4 there, which here means every k is at
/// least 3 and most are 4 or more (the hand-off ratio at k = 4 is 1.62-2.07 over seeds 1-12
/// against the bound 2, so a few sets of draws stop at 3; README, "Calibrating the
/// hand-off"). Cost: 104 network evaluations per seed (the final samples are skipped).
#[test]
fn mnist_calibrated_k_holds_on_fresh_noise() {
    let data = load_csv(BUNDLED_DATA.as_ref()).expect("bundled data");
    let model = fit(&data).expect("fit");
    let mut ideal = IdealDenoiser::<f32>::new(&data.rows, data.dim).expect("ideal model");
    let ctx = Context::cpu();
    let sigmas = karras_sigmas(18, 0.002, 80.0, 7.0).unwrap();
    let levels = edm(&sigmas);
    let mut chosen = Vec::new();
    for seed in 1..=6 {
        let x_t = noise(32, data.dim, sigmas[0], seed);
        // The choice is made at the hand-off; skipping the candidates' final samples keeps
        // this test to the reference and the step check (104 NFE per seed).
        let opts = Options {
            final_samples: false,
            ..Options::default()
        };
        let cal = calibrate(&ctx, &model, &mut ideal, &levels, &x_t, &opts).expect("calibrate");
        println!("seed {seed}: {}\n{}", cal.summary(), cal.table());
        assert_eq!(cal.tolerance_rule, "hand-off");
        assert_eq!(cal.cost.reference, 35);
        assert_eq!(cal.cost.step_check, 69);
        assert_eq!(cal.cost.candidates, 0);
        assert_eq!(cal.cost.total, 35 + 69);
        assert!(cal.candidates.iter().all(|c| c.rms_change.is_none()));
        chosen.push(cal.k);
    }
    println!("calibrated k for seeds 1..=6: {chosen:?}");
    assert!(chosen.iter().all(|&k| k >= 3), "timid: {chosen:?}");
    assert!(
        2 * chosen.iter().filter(|&&k| k >= 4).count() > chosen.len(),
        "timid: {chosen:?}"
    );

    let fresh = noise(64, data.dim, sigmas[0], 1000);
    let mut full = fresh.clone();
    edm_heun(&mut ideal, &mut full, &sigmas, 0).unwrap();
    let base = ideal.nearest(&full).unwrap();
    chosen.sort_unstable();
    chosen.dedup();
    for k in chosen {
        let mut jumped = vec![0f32; fresh.len()];
        ctx.skip(&model, &fresh, &mut jumped, levels[0], levels[k])
            .unwrap();
        edm_heun(&mut ideal, &mut jumped, &sigmas, k).unwrap();
        let b = ideal.nearest(&jumped).unwrap();
        let same = base.iter().zip(&b).filter(|(x, y)| x == y).count();
        println!("fresh draws: {same}/64 nearest the same training image at k = {k}");
        assert!(same * 100 >= 98 * 64, "only {same}/64 kept at k = {k}");
    }
}

/// A Gaussian model N(mean, diag(eigvals)) in `dim` dimensions along the coordinate axes.
fn axis_model(dim: usize) -> Model {
    let mut eigvecs = vec![0f32; dim * dim];
    for i in 0..dim {
        eigvecs[i * dim + i] = 1.0;
    }
    let eigvals: Vec<f64> = (0..dim).map(|i| 4.0 / (1.0 + i as f64)).collect();
    let mean: Vec<f32> = (0..dim).map(|i| 0.1 * i as f32 - 0.3).collect();
    Model::from_parts(mean, eigvals, eigvecs, 0.0, ModelMeta::default()).unwrap()
}

/// The model's own denoiser as the "network".
fn gauss_net(model: &Model) -> impl FnMut(&[f32], Noise, &mut [f32]) -> gaussskip::Result<()> + '_ {
    let ctx = Context::cpu();
    move |x, at, out| ctx.denoise(model, x, out, at)
}

fn small_calibration(model: &Model) -> gaussskip::calibrate::Calibration {
    let levels = edm(&karras_sigmas(8, 0.002, 80.0, 7.0).unwrap());
    let x_t = noise(8, model.dim(), 80.0, 5);
    calibrate(
        &Context::cpu(),
        model,
        &mut gauss_net(model),
        &levels,
        &x_t,
        &Options::default(),
    )
    .unwrap()
}

/// With Gaussian data the network is the Gaussian: no denoiser gap, and the only change a
/// jump makes is the sampler's own error on the steps it replaces (the jump is exact), so
/// it stays on the scale of the step-count error.
#[test]
fn gaussian_network_has_no_gap() {
    let model = axis_model(12);
    let cal = small_calibration(&model);
    println!("{}\n{}", cal.summary(), cal.table());
    assert!(
        cal.denoiser_gap.iter().all(|&g| g < 1e-5),
        "{:?}",
        cal.denoiser_gap
    );
    let step = cal.step_error.unwrap();
    assert!(step > 0.0);
    assert!(
        cal.candidates
            .iter()
            .all(|c| c.rms_change.unwrap() <= 1.5 * step),
        "{}",
        cal.table()
    );
    assert!(
        cal.k >= 3,
        "k = {} on a network that is the Gaussian",
        cal.k
    );
    assert_eq!(cal.cost.reference, 15);
    assert_eq!(cal.cost.step_check, 29);
    assert_eq!(
        cal.cost.total,
        cal.cost.reference + cal.cost.step_check + cal.cost.candidates
    );
}

/// The refined schedule: a midpoint in every step but a last one to 0, in each family.
#[test]
fn refined_schedules() {
    let e = refined(&edm(&[80.0, 20.0, 5.0, 0.0])).unwrap();
    assert_eq!(e.len(), 6);
    assert!((e[1].sigma - 40.0).abs() < 1e-12 && (e[3].sigma - 10.0).abs() < 1e-12);
    assert_eq!(e[5], Noise::edm(0.0));
    let f = refined(&[Noise::flow(1.0), Noise::flow(0.5), Noise::flow(0.0)]).unwrap();
    assert_eq!(f.len(), 4);
    assert!((f[1].sigma - 0.75).abs() < 1e-12 && (f[1].alpha - 0.25).abs() < 1e-12);
    let v = refined(&[Noise::vp(0.01), Noise::vp(0.5), Noise::new(1.0, 0.0)]).unwrap();
    assert_eq!(v.len(), 4);
    assert!((v[1].alpha.hypot(v[1].sigma) - 1.0).abs() < 1e-12);
    assert!(v[1].edm_sigma() < v[0].edm_sigma() && v[1].edm_sigma() > v[2].edm_sigma());
    let mixed = [
        Noise::new(0.5, 3.0),
        Noise::new(0.9, 1.0),
        Noise::new(1.0, 0.0),
    ];
    assert!(matches!(
        refined(&mixed),
        Err(Error::InvalidArgument { .. })
    ));
}

/// VP levels with DDIM (Euler) and flow levels from pure noise calibrate as well; Heun on
/// them is refused.
#[test]
fn vp_and_flow_levels() {
    let model = axis_model(6);
    let ctx = Context::cpu();
    let flow: Vec<Noise> = (0..=10)
        .map(|i| Noise::flow(1.0 - i as f64 / 10.0))
        .collect();
    let x_t = noise(4, 6, 1.0, 9);
    let opts = Options {
        sampler: Sampler::Euler,
        ..Options::default()
    };
    let cal = calibrate(&ctx, &model, &mut gauss_net(&model), &flow, &x_t, &opts).unwrap();
    assert!(cal.candidates[0].sigma.is_finite());
    assert!(cal.k >= 1);
    let heun = Options::default();
    let err = calibrate(&ctx, &model, &mut gauss_net(&model), &flow, &x_t, &heun).unwrap_err();
    assert!(err.to_string().contains("Heun runs on EDM levels"), "{err}");
    let bars = gaussskip::sampler::ddpm_alpha_bars(1000, 1e-4, 0.02).unwrap();
    let vp = gaussskip::sampler::ddim_levels(&bars, 10).unwrap();
    let x_t = noise(4, 6, vp[0].sigma, 10);
    let cal = calibrate(&ctx, &model, &mut gauss_net(&model), &vp, &x_t, &opts).unwrap();
    assert_eq!(cal.cost.reference, 10);
    assert_eq!(cal.cost.step_check, 19);
}

/// Errors of the network stop the calibration and come back unchanged; NaN from the network
/// is an error.
#[test]
fn network_errors_propagate() {
    let model = axis_model(4);
    let ctx = Context::cpu();
    let levels = edm(&karras_sigmas(6, 0.002, 80.0, 7.0).unwrap());
    let x_t = noise(2, 4, 80.0, 3);
    let mut calls = 0;
    let mut failing = |x: &[f32], _: Noise, out: &mut [f32]| {
        calls += 1;
        if calls == 5 {
            return Err(Error::Callback("out of GPU memory".into()));
        }
        out.copy_from_slice(x);
        Ok(())
    };
    let err = calibrate(
        &ctx,
        &model,
        &mut failing,
        &levels,
        &x_t,
        &Options::default(),
    );
    assert!(
        matches!(err, Err(Error::Callback(ref m)) if m == "out of GPU memory"),
        "{err:?}"
    );
    let mut nan = |_: &[f32], _: Noise, out: &mut [f32]| {
        out.fill(f32::NAN);
        Ok(())
    };
    let err = calibrate(&ctx, &model, &mut nan, &levels, &x_t, &Options::default());
    assert!(
        matches!(
            err,
            Err(Error::NonFinite {
                arg: "denoiser output",
                ..
            })
        ),
        "{err:?}"
    );
}

/// Bad schedules, sizes and options are refused before any network call.
#[test]
fn bad_inputs_are_refused() {
    let model = axis_model(4);
    let ctx = Context::cpu();
    let x_t = noise(2, 4, 80.0, 3);
    let good = edm(&[80.0, 10.0, 1.0, 0.0]);
    let mut calls = 0;
    let mut den = |x: &[f32], _: Noise, out: &mut [f32]| {
        calls += 1;
        out.copy_from_slice(x);
        Ok(())
    };
    let o = Options::default();
    let mut run = |levels: &[Noise], x: &[f32], o: &Options| {
        calibrate(&ctx, &model, &mut den, levels, x, o)
            .unwrap_err()
            .to_string()
    };
    assert!(run(&edm(&[80.0, 0.0]), &x_t, &o).contains("at least 3 levels"));
    assert!(run(&edm(&[80.0, 90.0, 0.0]), &x_t, &o).contains("strictly decrease"));
    assert!(run(&edm(&[80.0, 0.0, 0.0]), &x_t, &o).contains("only the last"));
    assert!(run(&edm(&[80.0, f64::NAN, 0.0]), &x_t, &o).contains("finite"));
    assert!(run(&good, &x_t[..7], &o).contains("x_t"));
    let mut bad_x = x_t.clone();
    bad_x[3] = f32::INFINITY;
    assert!(run(&good, &bad_x, &o).contains("non-finite"));
    for max_k in [0, 3] {
        let o = Options {
            max_k: Some(max_k),
            ..Options::default()
        };
        assert!(run(&good, &x_t, &o).contains("max_k"));
    }
    let o = Options {
        tolerance: Tolerance::Rms(-1.0),
        ..Options::default()
    };
    assert!(run(&good, &x_t, &o).contains("tolerance"));
    let o = Options {
        tolerance: Tolerance::Rms(0.1),
        final_samples: false,
        ..Options::default()
    };
    assert!(run(&good, &x_t, &o).contains("final_samples"));
    let reference = vec![0f32; 7];
    let o = Options {
        reference: Some(&reference),
        ..Options::default()
    };
    assert!(run(&good, &x_t, &o).contains("reference"));
    assert_eq!(calls, 0);
}

/// A calibration travels in the model file, several schedules coexist, lookups tolerate
/// float32 rounding of the schedule, and a missing one is a clear error.
#[test]
fn stored_calibrations_round_trip() {
    let model = axis_model(5);
    let cal = small_calibration(&model);
    let with = with_calibration(&model, &cal).unwrap();
    let euler = {
        let levels = edm(&karras_sigmas(6, 0.002, 80.0, 7.0).unwrap());
        let x_t = noise(4, 5, 80.0, 8);
        let o = Options {
            sampler: Sampler::Euler,
            tolerance: Tolerance::Rms(0.05),
            ..Options::default()
        };
        calibrate(
            &Context::cpu(),
            &with,
            &mut gauss_net(&with),
            &levels,
            &x_t,
            &o,
        )
        .unwrap()
    };
    let both = with_calibration(&with, &euler).unwrap();
    let dir = std::env::temp_dir().join(format!("gaussskip-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    both.save(&path).unwrap();
    let loaded = Model::load(&path).unwrap();
    assert_eq!(loaded.meta().calibrations.iter().count(), 2);
    for c in both.meta().calibrations.iter() {
        let l = loaded
            .meta()
            .calibrations
            .find(c.sampler, &c.levels)
            .unwrap();
        assert_eq!(
            (l.k, l.cost, l.batch, l.candidates.len()),
            (c.k, c.cost, c.batch, c.candidates.len())
        );
        for (a, b) in l.candidates.iter().zip(&c.candidates) {
            let (a, b) = (a.rms_change.unwrap(), b.rms_change.unwrap());
            assert!((a - b).abs() <= 1e-12 * b.abs());
        }
    }
    let rounded: Vec<Noise> = cal
        .levels
        .iter()
        .map(|n| Noise::edm(n.sigma as f32 as f64))
        .collect();
    assert_eq!(
        calibrated_k(&loaded, Sampler::Heun, &rounded).unwrap(),
        cal.k
    );
    assert_eq!(
        calibrated_k(&loaded, Sampler::Euler, &euler.levels).unwrap(),
        euler.k
    );
    let err = calibrated_k(&loaded, Sampler::Euler, &cal.levels).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("k = \"auto\" needs a calibration") && msg.contains("heun 8 steps"),
        "{msg}"
    );
    let none = calibrated_k(&model, Sampler::Heun, &cal.levels).unwrap_err();
    assert!(none.to_string().contains("it holds none"), "{none}");

    // Recalibrating the same schedule replaces the stored one.
    let again = with_calibration(&both, &cal).unwrap();
    assert_eq!(again.meta().calibrations.iter().count(), 2);

    // A corrupt entry is a file-format error naming the key.
    let good = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&good).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    for bad in ["{", "[]", r#"{"x": {"sampler": "heun"}}"#] {
        assert!(Calibrations::from_json(bad).is_err());
        let mut meta = header.metadata().clone().unwrap();
        meta.insert("calibration".into(), bad.into());
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            st.tensors().into_iter().collect();
        let bytes = safetensors::tensor::serialize(views, Some(meta)).unwrap();
        let err = Model::from_bytes(&bytes, "bad.safetensors").unwrap_err();
        assert!(
            matches!(err, Error::FileFormat { .. }) && err.to_string().contains("calibration"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
