//! The demo's class-conditional section: when the data carries labels, sample with the
//! class-conditional ideal model (each sample's posterior mean over the training items of its
//! own class) and compare two jumps over the first k steps: the one global Gaussian, and the
//! Gaussian of each sample's class (a model of one component per class, one component per
//! row).

use indicatif::ProgressBar;

use super::{Dataset, Options};
use crate::context::Context;
use crate::error::Result;
use crate::fit::{fit_classes, FitOptions, LoadedClasses, Moments, Rank, Residual};
use crate::ideal::IdealDenoiser;
use crate::model::{Model, ModelMeta};
use crate::noise::Noise;
use crate::sampler::{Denoiser, Step};

/// One line of the class-conditional table.
#[derive(Clone, Debug)]
pub struct ClassRow {
    /// Skipped steps.
    pub k: usize,
    /// The level the sampler starts from.
    pub handoff: Noise,
    /// Evaluations saved against the run without a jump.
    pub nfe_saved: usize,
    /// Share of NFE saved.
    pub saved_fraction: f64,
    /// Samples nearest the same training item as without a jump, jumping with the global
    /// Gaussian.
    pub same_global: usize,
    /// The same, jumping with each sample's class Gaussian.
    pub same_class: usize,
}

/// The class-conditional section of a demo run.
#[derive(Clone, Debug)]
pub struct ClassTable {
    /// One row per k (k = 0 first).
    pub rows: Vec<ClassRow>,
    /// Samples per run.
    pub batch: usize,
    /// The class labels, in component order.
    pub labels: Vec<String>,
    /// Final samples of the runs that jump with the class Gaussians, per k.
    pub finals: Vec<Vec<f32>>,
}

impl ClassTable {
    /// The table as printed by `gaussskip demo`.
    pub fn table(&self) -> String {
        let b = self.batch;
        let pct = |n: usize| format!("{n:>3}/{b} ({:>3.0}%)", 100.0 * n as f64 / b as f64);
        let mut s = String::from(
            "   k  sigma at hand-off  NFE saved  same nearest: global Gaussian  class Gaussian\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{:>4}  {:>17}  {:>9}  {:>30}  {:>14}\n",
                r.k,
                super::format_sigma(r.handoff.edm_sigma()),
                format!("{} ({:.1}%)", r.nfe_saved, 100.0 * r.saved_fraction),
                pct(r.same_global),
                pct(r.same_class),
            ));
        }
        s
    }
}

/// The class-conditional ideal model: rows of each class denoised by the ideal model of that
/// class's items.
struct ClassIdeal<'a> {
    ideals: &'a [IdealDenoiser<f32>],
    /// The batch rows of every class (`crate::rows::groups`).
    rows_of: &'a [Vec<usize>],
    bar: &'a ProgressBar,
}

impl Denoiser<f32> for ClassIdeal<'_> {
    fn denoise(&mut self, x: &[f32], at: Noise, out: &mut [f32]) -> Result<()> {
        let d = self.ideals[0].dim();
        for (ideal, rows) in self.ideals.iter().zip(self.rows_of) {
            if rows.is_empty() {
                continue;
            }
            let gx: Vec<f32> = rows
                .iter()
                .flat_map(|&r| x[r * d..(r + 1) * d].iter().copied())
                .collect();
            let mut gout = vec![0f32; gx.len()];
            ideal.denoise(&gx, at, &mut gout)?;
            for (i, &r) in rows.iter().enumerate() {
                out[r * d..(r + 1) * d].copy_from_slice(&gout[i * d..(i + 1) * d]);
            }
        }
        self.bar.inc(1);
        Ok(())
    }

    fn observe(&mut self, _step: Step<'_, f32>) {}
}

/// Runs the section; `None` when the data has no labels.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    opts: &Options,
    data: &Dataset,
    global: &Model,
    ctx: &Context,
    levels: &[Noise],
    noise: &[f32],
    all: &IdealDenoiser<f32>,
    bar: &ProgressBar,
) -> Result<Option<ClassTable>> {
    if data.labels.len() != data.items || data.items == 0 {
        return Ok(None);
    }
    let d = data.dim;
    let mut labels: Vec<i64> = data.labels.clone();
    labels.sort_unstable();
    labels.dedup();
    let class_index = |l: i64| labels.binary_search(&l).expect("a label of the data");
    // One accumulator and one ideal model per class.
    let mut moments: Vec<Moments> = labels.iter().map(|_| Moments::new(d)).collect();
    let mut members: Vec<Vec<f32>> = vec![Vec::new(); labels.len()];
    for (row, &l) in data.rows.chunks_exact(d).zip(&data.labels) {
        let c = class_index(l);
        moments[c].add_rows(row)?;
        members[c].extend_from_slice(row);
    }
    let loaded = LoadedClasses {
        classes: labels.iter().map(|l| l.to_string()).zip(moments).collect(),
        item_shape: data.item_shape.clone(),
        value_space: "[-1,1]".to_string(),
    };
    let model = fit_classes(
        &loaded,
        &FitOptions {
            rank: Rank::Full,
            residual: Residual::Zero,
            meta: ModelMeta {
                item_shape: data.item_shape.clone(),
                value_space: "[-1,1]".to_string(),
                sample_count: 0,
                source: "the demo's data, one Gaussian per class".to_string(),
                ..ModelMeta::default()
            },
        },
    )?;
    let ideals: Vec<IdealDenoiser<f32>> = members
        .iter()
        .map(|m| IdealDenoiser::new(m, d))
        .collect::<Result<_>>()?;
    // Classes assigned round-robin: every class is sampled about equally.
    let component: Vec<u32> = (0..opts.batch).map(|i| (i % labels.len()) as u32).collect();
    let rows_of = crate::rows::groups(&component, labels.len());

    let sample = |x: &mut [f32], k: usize| -> Result<usize> {
        let mut den = ClassIdeal {
            ideals: &ideals,
            rows_of: &rows_of,
            bar,
        };
        opts.schedule.sample(&mut den, x, levels, k)
    };
    let mut x = noise.to_vec();
    let full_nfe = sample(&mut x, 0)?;
    let base = all.nearest(&x)?;
    let same = |x: &[f32]| -> Result<usize> {
        let n = all.nearest(x)?;
        Ok(n.iter().zip(&base).filter(|(a, b)| a == b).count())
    };
    let mut rows = vec![ClassRow {
        k: 0,
        handoff: levels[0],
        nfe_saved: 0,
        saved_fraction: 0.0,
        same_global: opts.batch,
        same_class: opts.batch,
    }];
    let mut finals = vec![x];
    for k in 1..=opts.max_skip {
        let mut xg = noise.to_vec();
        ctx.skip(global, noise, &mut xg, levels[0], levels[k])?;
        let nfe = sample(&mut xg, k)?;
        let same_global = same(&xg)?;
        let mut xc = noise.to_vec();
        ctx.apply_components(
            &model,
            crate::noise::Op::Skip {
                from: levels[0].into(),
                to: levels[k].into(),
            },
            noise,
            &mut xc,
            Some(&component),
        )?;
        sample(&mut xc, k)?;
        let same_class = same(&xc)?;
        rows.push(ClassRow {
            k,
            handoff: levels[k],
            nfe_saved: full_nfe - nfe,
            saved_fraction: (full_nfe - nfe) as f64 / full_nfe as f64,
            same_global,
            same_class,
        });
        finals.push(xc);
    }
    Ok(Some(ClassTable {
        rows,
        batch: opts.batch,
        labels: labels.iter().map(|l| l.to_string()).collect(),
        finals,
    }))
}
