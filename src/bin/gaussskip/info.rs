//! `gaussskip info`: what a model file holds, its spectrum, and when its modes commit.
//!
//! A mode of variance lambda is half committed (by power) at the EDM noise level where its
//! denoiser gain lambda / (lambda + sigma^2) crosses 1/2, i.e. sigma = sqrt(lambda) (SPEC §4,
//! `Noise::commitment`). Reading the modes at a few quantiles shows which noise range decides
//! the layout (large lambda) and which the details (small lambda).

use std::io::Write;
use std::path::PathBuf;

use gaussskip::{Error, FitInfo, FitMethod, Model, Noise, Result};

use crate::num;
use serde_json::json;

/// Arguments of `gaussskip info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model file (safetensors, as written by `gaussskip fit`).
    model: PathBuf,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
}

/// Mode quantiles reported in the commitment table (0 = largest eigenvalue).
const QUANTILES: [f64; 5] = [0.0, 0.1, 0.5, 0.9, 1.0];
/// Variance fractions for which the number of modes needed is reported.
const TARGETS: [f64; 3] = [0.5, 0.9, 0.99];
/// EDM noise levels at which the number of already half-committed modes is reported: the
/// usual sigma_max, the published skip target, the level below which skipping breaks down,
/// and a late one.
const SIGMAS: [f64; 4] = [80.0, 19.4, 5.0, 1.0];

/// Everything the report shows, computed once for both output forms.
struct Summary {
    total: f64,
    /// (top k modes, fraction of the total variance).
    explained: Vec<(usize, f64)>,
    /// (target fraction, fewest modes that reach it, or None when the modes cannot).
    modes_for: Vec<(f64, Option<usize>)>,
    /// (quantile, 1-based mode number, eigenvalue, half-commitment EDM sigma).
    commitment: Vec<(f64, usize, f64, f64)>,
    /// (EDM sigma, modes with sqrt(lambda) > sigma).
    committed_at: Vec<(f64, usize)>,
}

fn summarise(model: &Model) -> Summary {
    let eigvals = model.eigvals();
    let r = eigvals.len();
    let off = (model.dim() - r) as f64 * model.residual_var();
    let mut cumulative = Vec::with_capacity(r);
    let mut acc = 0.0;
    for &l in eigvals {
        acc += l;
        cumulative.push(acc);
    }
    let total = acc + off;
    let frac = |k: usize| {
        if total > 0.0 {
            cumulative[k - 1] / total
        } else {
            0.0
        }
    };
    let mut tops: Vec<usize> = std::iter::successors(Some(1usize), |&k| k.checked_mul(10))
        .take_while(|&k| k < r)
        .collect();
    tops.push(r);
    let explained = tops.into_iter().map(|k| (k, frac(k))).collect();
    let modes_for = TARGETS
        .iter()
        .map(|&p| (p, (1..=r).find(|&k| total > 0.0 && frac(k) >= p)))
        .collect();
    let commitment = QUANTILES
        .iter()
        .map(|&q| {
            let k = (q * (r - 1) as f64).round() as usize;
            (q, k + 1, eigvals[k], half_commitment_sigma(eigvals[k]))
        })
        .collect();
    let committed_at = SIGMAS
        .iter()
        .map(|&s| (s, eigvals.iter().filter(|&&l| l.sqrt() > s).count()))
        .collect();
    Summary {
        total,
        explained,
        modes_for,
        commitment,
        committed_at,
    }
}

/// The EDM sigma at which a mode of variance `lambda` is half committed: sqrt(lambda), where
/// `Noise::edm(sigma).commitment(lambda)^2` = lambda / (lambda + sigma^2) = 1/2.
fn half_commitment_sigma(lambda: f64) -> f64 {
    let sigma = lambda.sqrt();
    debug_assert!(
        lambda == 0.0 || (Noise::edm(sigma).commitment(lambda).powi(2) - 0.5).abs() < 1e-12
    );
    sigma
}

fn percent(f: f64) -> String {
    format!("{:.2}%", 100.0 * f)
}

/// Runs `gaussskip info`.
///
/// # Errors
/// Those of [`Model::load`]: `Io` for an unreadable file, `FileFormat` for a file that is not
/// a valid model.
pub fn run(args: Args) -> Result<()> {
    let model = Model::load(&args.model)?;
    let s = summarise(&model);
    let text = if args.json {
        format!("{:#}\n", json_report(&args, &model, &s))
    } else {
        text_report(&args, &model, &s)
    };
    // A reader that stops early (`| head`) is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("<stdout>", e)),
        _ => Ok(()),
    }
}

fn json_report(args: &Args, model: &Model, s: &Summary) -> serde_json::Value {
    let meta = model.meta();
    let eigvals = model.eigvals();
    json!({
        "path": args.model.display().to_string(),
        "dim": model.dim(),
        "rank": model.rank(),
        "item_shape": meta.item_shape,
        "value_space": meta.value_space,
        "sample_count": meta.sample_count,
        "source": meta.source,
        "residual_var": model.residual_var(),
        "components": components(model).iter().map(|c| json!({
            "label": c.label, "count": c.count, "rank": c.rank,
            "eigval_max": c.top, "residual_var": c.residual_var,
        })).collect::<Vec<_>>(),
        "fit": meta.fit.as_ref().map(|f| json!({
            "method": f.method.name(),
            "passes": f.passes,
            "sketch_width": f.sketch_width,
            "seed": f.seed,
            "explained": f.explained,
            "captured_estimate": f.captured_estimate,
        })),
        "eigval_max": eigvals[0],
        "eigval_min": eigvals[model.rank() - 1],
        "total_variance": s.total,
        "explained_by_top": s.explained.iter()
            .map(|&(k, f)| json!({"modes": k, "fraction": f})).collect::<Vec<_>>(),
        "modes_for_fraction": s.modes_for.iter()
            .map(|&(p, k)| json!({"fraction": p, "modes": k})).collect::<Vec<_>>(),
        "half_commitment": s.commitment.iter()
            .map(|&(q, k, l, sigma)| json!({"quantile": q, "mode": k, "eigval": l, "edm_sigma": sigma}))
            .collect::<Vec<_>>(),
        "half_committed_modes_at": s.committed_at.iter()
            .map(|&(sigma, n)| json!({"edm_sigma": sigma, "modes": n})).collect::<Vec<_>>(),
    })
}

/// How the model was fitted, from the `fit_*` metadata.
fn fit_lines(fit: Option<&FitInfo>, rank: usize) -> Vec<String> {
    let Some(f) = fit else {
        return vec!["  fit method            (not recorded)".into()];
    };
    let passes = format!("{} pass{}", f.passes, if f.passes == 1 { "" } else { "es" });
    let mut out = vec![match f.method {
        FitMethod::Exact => format!("  fit method            exact eigendecomposition ({passes})"),
        FitMethod::Sketch => format!(
            "  fit method            low-rank sketch, {passes}, width {}, seed {}",
            f.sketch_width.map_or("?".into(), |w| w.to_string()),
            f.seed.map_or("?".into(), |s| s.to_string())
        ),
    }];
    out.push(format!(
        "  variance kept         {} of the data's total variance",
        percent(f.explained)
    ));
    match (f.method, f.captured_estimate) {
        (FitMethod::Sketch, Some(c)) => out.push(format!(
            "  captured (estimate)   {:.4}% of the top-{rank} variance (1 = converged)",
            100.0 * c
        )),
        (FitMethod::Sketch, None) => out.push(
            "  captured (estimate)   none from one pass (fit with --passes 2 or more for one)"
                .into(),
        ),
        (FitMethod::Exact, _) => {}
    }
    out
}

/// One line of the components table.
struct ComponentLine {
    label: String,
    count: u64,
    rank: usize,
    top: f64,
    residual_var: f64,
}

fn components(model: &Model) -> Vec<ComponentLine> {
    (0..model.n_components())
        .filter_map(|k| model.component(k).ok())
        .map(|c| ComponentLine {
            label: c.label().to_string(),
            count: c.count(),
            rank: c.rank(),
            top: c.eigvals()[0],
            residual_var: c.residual_var(),
        })
        .collect()
}

fn text_report(args: &Args, model: &Model, s: &Summary) -> String {
    let meta = model.meta();
    let eigvals = model.eigvals();
    let (dim, rank) = (model.dim(), model.rank());
    let or_unknown = |t: &str| {
        if t.is_empty() {
            "(unknown)".to_string()
        } else {
            t.to_string()
        }
    };
    let shape = meta
        .item_shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x");
    let count = if meta.sample_count == 0 {
        "(unknown)".to_string()
    } else {
        meta.sample_count.to_string()
    };
    let kind = if rank == dim { "full" } else { "truncated" };
    let off = if rank == dim {
        "no directions off the modes".to_string()
    } else {
        format!("each of the {} directions off the modes", dim - rank)
    };
    let mut o = String::new();
    let mut line = |t: String| {
        o.push_str(&t);
        o.push('\n');
    };
    line(format!("model {}", args.model.display()));
    line(format!("  dimension             {dim}"));
    line(format!("  rank                  {rank} of {dim} ({kind})"));
    line(format!("  item shape            {}", or_unknown(&shape)));
    line(format!(
        "  value space           {}",
        or_unknown(&meta.value_space)
    ));
    line(format!("  sample count          {count}"));
    line(format!(
        "  source                {}",
        or_unknown(&meta.source)
    ));
    line(format!(
        "  residual variance     {} (lambda_perp, {off})",
        num(model.residual_var())
    ));
    for l in fit_lines(meta.fit.as_ref(), rank) {
        line(l);
    }
    if model.n_components() > 1 {
        line(format!(
            "components            {} (one Gaussian per class; the spectrum below is component 0's)",
            model.n_components()
        ));
        for c in components(model) {
            line(format!(
                "  {:<21} {} items, rank {}, largest eigenvalue {}, residual variance {}",
                c.label,
                c.count,
                c.rank,
                num(c.top),
                num(c.residual_var)
            ));
        }
    }
    line("spectrum".into());
    line(format!("  largest eigenvalue    {}", num(eigvals[0])));
    line(format!(
        "  smallest eigenvalue   {}",
        num(eigvals[rank - 1])
    ));
    line(format!("  total variance        {}", num(s.total)));
    for (k, f) in &s.explained {
        line(format!(
            "  top {:<17} {} of the variance",
            format!("{k} mode{}", if *k == 1 { "" } else { "s" }),
            percent(*f)
        ));
    }
    for (p, k) in &s.modes_for {
        let label = format!("{:.0}% of variance", 100.0 * p);
        match k {
            Some(k) => line(format!("  {label:<21} {k} modes")),
            None => line(format!("  {label:<21} not reached by the {rank} modes")),
        }
    }
    line(
        "half commitment: EDM sigma = sqrt(lambda), where the gain lambda/(lambda+sigma^2) = 1/2"
            .into(),
    );
    line(format!(
        "  {:>8}  {:<6}  {:<12}  sigma",
        "quantile", "mode", "eigenvalue"
    ));
    for (q, k, l, sigma) in &s.commitment {
        line(format!(
            "  {:>8}  {k:<6}  {:<12}  {}",
            format!("{:.0}%", 100.0 * q),
            num(*l),
            num(*sigma)
        ));
    }
    let at = s
        .committed_at
        .iter()
        .map(|(sigma, n)| format!("sigma {}: {n}", num(*sigma)))
        .collect::<Vec<_>>()
        .join(", ");
    line(format!("  modes half committed at {at} (of {rank})"));
    o
}
