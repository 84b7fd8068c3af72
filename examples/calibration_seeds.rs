//! How the calibrated k depends on the calibration draws, on the bundled MNIST ideal model
//! (EDM Heun, 18 steps, default rule): for each batch size and seed, the chosen k and the
//! hand-off ratio (jump error / sampler error, bound 2) at k and k + 1. The README's seed
//! table comes from this run:
//!
//! ```sh
//! cargo run --release --example calibration_seeds            # 32 draws, seeds 1-12
//! cargo run --release --example calibration_seeds -- 16 1 2 3  # 16 draws, seeds 1, 2, 3
//! ```

use gaussskip::calibrate::{calibrate, Options};
use gaussskip::demo::{fit, load_csv, BUNDLED_DATA};
use gaussskip::ideal::IdealDenoiser;
use gaussskip::noise::karras_sigmas;
use gaussskip::rng::Rng;
use gaussskip::{Context, Noise};

fn main() -> gaussskip::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments: BATCH SEED..."))
        .collect();
    let batch = args.first().map_or(32, |&b| b as usize);
    let seeds: Vec<u64> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        (1..=12).collect()
    };
    let data = load_csv(BUNDLED_DATA.as_ref())?;
    let model = fit(&data)?;
    let mut ideal = IdealDenoiser::<f32>::new(&data.rows, data.dim)?;
    let ctx = Context::cpu();
    let sigmas = karras_sigmas(18, 0.002, 80.0, 7.0)?;
    let levels: Vec<Noise> = sigmas.iter().map(|&s| Noise::edm(s)).collect();
    println!("{batch} draws, EDM Heun 18 steps, default rule (hand-off ratio <= 2)");
    for seed in seeds {
        let x_t: Vec<f32> = Rng::new(seed)
            .normals(batch * data.dim)
            .into_iter()
            .map(|e| (sigmas[0] * e) as f32)
            .collect();
        let cal = calibrate(
            &ctx,
            &model,
            &mut ideal,
            &levels,
            &x_t,
            &Options {
                reference: Some(&data.rows),
                ..Options::default()
            },
        )?;
        let ratio = |k: usize| {
            cal.candidates
                .get(k.wrapping_sub(1))
                .and_then(|c| Some(c.jump_error? / c.sampler_error?))
                .map_or("-".to_string(), |r| format!("{r:.2}"))
        };
        let kept = |k: usize| {
            cal.candidates
                .get(k.wrapping_sub(1))
                .and_then(|c| c.same_nearest)
                .map_or("-".to_string(), |n| format!("{n}/{batch}"))
        };
        println!(
            "seed {seed:>3}: k = {}  ratio at k {} / at k+1 {}  same nearest at k {} / at k+1 {}  ({} NFE)",
            cal.k,
            ratio(cal.k),
            ratio(cal.k + 1),
            kept(cal.k),
            kept(cal.k + 1),
            cal.cost.total
        );
    }
    Ok(())
}
