//! Accuracy of the low-rank sketch against the exact eigendecomposition, per number of passes:
//! the table of the README's "Fitting at latent scale".
//!
//!     cargo run --release --example sketch_accuracy
//!
//! Data: the bundled MNIST (5,000 items, dim 784, in [-1, 1]) and 3,000 synthetic items in
//! 2,000 dimensions with variances k^-1.2 + 1e-4 (a slowly decaying spectrum over a noise
//! floor). For each: the worst relative error of the top-rank eigenvalues, the share of the
//! exact top-rank variance the fitted subspace captures, and the model's own estimate of it.

use std::path::Path;

use faer::{Mat, Side};
use gaussskip::fit::{FitOptions, Moments, Rank, Sketch, SketchOptions};
use gaussskip::rng::Rng;

struct Data {
    name: &'static str,
    dim: usize,
    rows: Vec<f32>,
    eigvals: Vec<f64>,
    cov: Mat<f64>,
}

fn data(name: &'static str, rows: Vec<f32>, dim: usize) -> Data {
    let mut m = Moments::new(dim);
    m.add_rows(&rows).expect("finite rows");
    let cov = m.covariance().expect("two or more items");
    let mut eigvals = cov
        .self_adjoint_eigenvalues(Side::Lower)
        .expect("eigenvalues");
    eigvals.reverse();
    Data {
        name,
        dim,
        rows,
        eigvals,
        cov,
    }
}

fn main() -> gaussskip::Result<()> {
    let mnist = gaussskip::demo::load_csv(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist_5k.csv.gz"),
    )?;
    let (n, d) = (3000, 2000);
    let sd: Vec<f64> = (1..=d)
        .map(|k| ((k as f64).powf(-1.2) + 1e-4).sqrt())
        .collect();
    let mut rng = Rng::new(11);
    let synthetic = (0..n * d)
        .map(|i| (5.0 + sd[i % d] * rng.normal()) as f32)
        .collect();
    let sets = [
        data("MNIST", mnist.rows, mnist.dim),
        data("k^-1.2 + floor", synthetic, d),
    ];
    println!(
        "{:<15} {:>4} {:>6} {:>6}  {:>11}  {:>12}  {:>12}",
        "data", "rank", "width", "passes", "eigval err", "captured", "estimate"
    );
    for set in &sets {
        for (rank, over) in [(64, None), (64, Some(192))] {
            for passes in 1..=6 {
                let opts = SketchOptions {
                    passes,
                    oversampling: over,
                    ..SketchOptions::new(rank)
                };
                let mut s = Sketch::new(set.dim, &opts)?;
                for p in 1..=passes {
                    if p > 1 {
                        s.next_pass()?;
                    }
                    s.add_rows(&set.rows)?;
                }
                let (model, _) = s.fit(&FitOptions {
                    rank: Rank::Fixed(rank),
                    ..FitOptions::default()
                })?;
                let err = model
                    .eigvals()
                    .iter()
                    .zip(&set.eigvals)
                    .map(|(a, b)| (a - b).abs() / b)
                    .fold(0.0, f64::max);
                let e = Mat::from_fn(rank, set.dim, |k, i| {
                    f64::from(model.eigvecs()[k * set.dim + i])
                });
                let ec = &e * &set.cov;
                let held: f64 = (0..rank)
                    .map(|k| (0..set.dim).map(|i| ec[(k, i)] * e[(k, i)]).sum::<f64>())
                    .sum();
                let captured = held / set.eigvals[..rank].iter().sum::<f64>();
                let estimate = model.meta().fit.as_ref().and_then(|f| f.captured_estimate);
                println!(
                    "{:<15} {rank:>4} {:>6} {passes:>6}  {err:>11.2e}  {:>11.5}%  {:>12}",
                    set.name,
                    s.width(),
                    100.0 * captured,
                    estimate.map_or("-".into(), |c| format!("{:.5}%", 100.0 * c))
                );
            }
        }
    }
    Ok(())
}
