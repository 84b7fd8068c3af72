//! Hand-off calibration (`gaussskip::calibrate`): the choice on the bundled MNIST ideal model
//! validated on fresh noise, exactness on Gaussian data, the stored form, and errors.

use gaussskip::calibrate::{
    calibrate, calibrated_k, refined, with_calibration, Calibration, Calibrations, Options,
    Sampler, Tolerance,
};
use gaussskip::demo::{fit, load_csv, BUNDLED_DATA};
use gaussskip::ideal::IdealDenoiser;
use gaussskip::noise::karras_sigmas;
use gaussskip::rng::Rng;
use gaussskip::sampler::{edm_heun, Denoiser};
use gaussskip::{Context, Error, Model, ModelMeta, Noise};

fn noise(rows: usize, dim: usize, sigma: f64, seed: u64) -> Vec<f32> {
    Rng::new(seed)
        .normals(rows * dim)
        .into_iter()
        .map(|e| (sigma * e) as f32)
        .collect()
}

/// The validation: calibrated on 16 draws, the chosen k keeps >= 98 % of 64 fresh
/// draws nearest the same training image as without the jump, and it is not timid (the jump
/// is exact to k = 4 on EDM Heun 18 steps).
#[test]
fn mnist_calibrated_k_holds_on_fresh_noise() {
    let data = load_csv(BUNDLED_DATA.as_ref()).expect("bundled data");
    let model = fit(&data).expect("fit");
    let mut ideal = IdealDenoiser::<f32>::new(&data.rows, data.dim).expect("ideal model");
    let ctx = Context::cpu();
    let sigmas = karras_sigmas(18, 0.002, 80.0, 7.0).unwrap();
    let x_t = noise(16, data.dim, sigmas[0], 1);
    let cal = calibrate(
        &ctx,
        &model,
        &mut ideal,
        &sigmas,
        &x_t,
        &Options {
            reference: Some(&data.rows),
            ..Options::default()
        },
    )
    .expect("calibrate");
    println!("{}\n{}", cal.summary(), cal.table());
    assert!(
        cal.k >= 4,
        "timid: k = {} (the jump is exact to k = 4)",
        cal.k
    );
    assert_eq!(cal.cost.reference, 35);
    assert_eq!(cal.cost.step_check, 69);
    let expected: usize = cal
        .candidates
        .iter()
        .map(|c| 35 - c.nfe_saved)
        .sum::<usize>();
    assert_eq!(cal.cost.candidates, expected);
    assert_eq!(cal.cost.total, 35 + 69 + expected);

    let fresh = noise(64, data.dim, sigmas[0], 2);
    let mut full = fresh.clone();
    edm_heun(&mut ideal, &mut full, &sigmas, 0).unwrap();
    let mut jumped = vec![0f32; fresh.len()];
    ctx.skip(
        &model,
        &fresh,
        &mut jumped,
        Noise::edm(sigmas[0]),
        Noise::edm(sigmas[cal.k]),
    )
    .unwrap();
    edm_heun(&mut ideal, &mut jumped, &sigmas, cal.k).unwrap();
    let (a, b) = (
        ideal.nearest(&full).unwrap(),
        ideal.nearest(&jumped).unwrap(),
    );
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    println!(
        "fresh draws: {same}/64 nearest the same training image at k = {}",
        cal.k
    );
    assert!(
        same * 100 >= 98 * 64,
        "only {same}/64 kept at k = {}",
        cal.k
    );
}
