//! Calibrations as the model file keeps them: one JSON object under the metadata key
//! `calibration`, mapping a schedule key (see [`schedule_key`]) to one calibration, so that
//! several schedules coexist. Lookups compare the schedule numerically (relative 1e-5), so a
//! schedule recomputed in float32 still finds its calibration.

use serde_json::{json, Map, Value};

use super::{Calibration, Candidate, Cost, Sampler};
use crate::noise::Noise;

/// The metadata key of the model file.
pub const METADATA_KEY: &str = "calibration";

/// Relative difference under which two sigmas are the same level.
const SIGMA_RTOL: f64 = 1e-5;

/// The calibrations a model holds, at most one per sampler and schedule.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Calibrations(Vec<Calibration>);

/// The readable key of a schedule: the sampler name, the number of steps, and the EDM
/// sigmas (sigma / alpha) to 6 significant digits, e.g.
/// `heun 18 steps: 80,57.5860,...,0.002,0`.
pub fn schedule_key(sampler: Sampler, levels: &[Noise]) -> String {
    let list: Vec<String> = levels
        .iter()
        .map(|n| match n.edm_sigma() {
            s if s.is_infinite() => "inf".to_string(),
            s => format!("{}", sig6(s)),
        })
        .collect();
    format!(
        "{} {} steps: {}",
        sampler.name(),
        levels.len().saturating_sub(1),
        list.join(",")
    )
}

fn sig6(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let scale = 10f64.powi(5 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

fn same_schedule(a: &[Noise], b: &[Noise]) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= SIGMA_RTOL * x.abs().max(y.abs());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(p, q)| close(p.alpha, q.alpha) && close(p.sigma, q.sigma))
}

impl Calibrations {
    /// No calibration held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All calibrations held.
    pub fn iter(&self) -> impl Iterator<Item = &Calibration> {
        self.0.iter()
    }

    /// Adds `c`, replacing a calibration of the same sampler and schedule.
    pub fn insert(&mut self, c: Calibration) {
        self.0
            .retain(|o| !(o.sampler == c.sampler && same_schedule(&o.levels, &c.levels)));
        self.0.push(c);
    }

    /// The calibration of `sampler` on `levels` (alpha and sigma equal to 1e-5 relative), if
    /// held.
    pub fn find(&self, sampler: Sampler, levels: &[Noise]) -> Option<&Calibration> {
        self.0
            .iter()
            .find(|c| c.sampler == sampler && same_schedule(&c.levels, levels))
    }

    /// The JSON text stored under the metadata key `calibration`.
    pub fn to_json(&self) -> String {
        let map: Map<String, Value> = self
            .0
            .iter()
            .map(|c| (schedule_key(c.sampler, &c.levels), c.to_value()))
            .collect();
        Value::Object(map).to_string()
    }

    /// Parses the text of the metadata key `calibration`.
    ///
    /// # Errors
    /// A message saying what is wrong (for `FileFormat` errors naming the file).
    pub fn from_json(text: &str) -> Result<Calibrations, String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("metadata {METADATA_KEY} is not valid JSON: {e}"))?;
        let Value::Object(map) = value else {
            return Err(format!(
                "metadata {METADATA_KEY} is not a JSON object of calibrations"
            ));
        };
        let mut out = Calibrations::default();
        for (key, v) in &map {
            let c = Calibration::from_value(v)
                .map_err(|e| format!("metadata {METADATA_KEY}, entry {key:?}: {e}"))?;
            out.insert(c);
        }
        Ok(out)
    }
}

impl Candidate {
    fn to_value(&self) -> Value {
        json!({
            "k": self.k,
            "sigma": self.sigma,
            "nfe_saved": self.nfe_saved,
            "rms_change": self.rms_change,
            "state_change": self.state_change,
            "jump_error": self.jump_error,
            "sampler_error": self.sampler_error,
            "denoiser_gap": self.denoiser_gap,
            "same_nearest": self.same_nearest,
            "within": self.within,
        })
    }

    fn from_value(v: &Value) -> Result<Candidate, String> {
        Ok(Candidate {
            k: uint(v, "k")?,
            sigma: num(v, "sigma")?,
            nfe_saved: uint(v, "nfe_saved")?,
            rms_change: opt_num(v, "rms_change")?,
            state_change: num(v, "state_change")?,
            jump_error: opt_num(v, "jump_error")?,
            sampler_error: opt_num(v, "sampler_error")?,
            denoiser_gap: num(v, "denoiser_gap")?,
            same_nearest: match v.get("same_nearest") {
                None | Some(Value::Null) => None,
                Some(_) => Some(uint(v, "same_nearest")?),
            },
            within: v
                .get("within")
                .and_then(Value::as_bool)
                .ok_or("`within` is missing or not a boolean")?,
        })
    }
}

impl Calibration {
    /// The calibration as a JSON value (the layout of the model file and of
    /// `gs_calibration_json`).
    pub fn to_value(&self) -> Value {
        json!({
            "sampler": self.sampler.name(),
            "levels": self.levels.iter().map(|n| [n.alpha, n.sigma]).collect::<Vec<_>>(),
            "k": self.k,
            "tolerance": self.tolerance,
            "tolerance_rule": self.tolerance_rule,
            "step_error": self.step_error,
            "batch": self.batch,
            "nfe_full": self.nfe_full,
            "cost": {
                "reference": self.cost.reference,
                "step_check": self.cost.step_check,
                "candidates": self.cost.candidates,
                "total": self.cost.total,
            },
            "denoiser_gap": self.denoiser_gap,
            "candidates": self.candidates.iter().map(Candidate::to_value).collect::<Vec<_>>(),
        })
    }

    /// Reads a value written by [`Calibration::to_value`], checking what a lookup relies on:
    /// valid levels and a k that leaves a step.
    ///
    /// # Errors
    /// A message naming the field that is missing or wrong.
    pub fn from_value(v: &Value) -> Result<Calibration, String> {
        let sampler = v
            .get("sampler")
            .and_then(Value::as_str)
            .ok_or("`sampler` is missing")?;
        let sampler = Sampler::from_name(sampler).map_err(|e| e.to_string())?;
        let levels = v
            .get("levels")
            .and_then(Value::as_array)
            .ok_or("`levels` is missing or not a list")?
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([a, s]) => match (a.as_f64(), s.as_f64()) {
                    (Some(a), Some(s)) => Ok(Noise::new(a, s)),
                    _ => Err("`levels` holds a pair that is not two numbers".to_string()),
                },
                _ => Err("`levels` holds an entry that is not an [alpha, sigma] pair".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        super::check_levels(&levels, sampler).map_err(|e| e.to_string())?;
        let k = uint(v, "k")?;
        if k > levels.len() - 2 {
            return Err(format!(
                "k = {k} leaves no step of the {} levels",
                levels.len()
            ));
        }
        let cost = v.get("cost").ok_or("`cost` is missing")?;
        let candidates = v
            .get("candidates")
            .and_then(Value::as_array)
            .ok_or("`candidates` is missing or not a list")?
            .iter()
            .map(Candidate::from_value)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Calibration {
            sampler,
            k,
            tolerance: num(v, "tolerance")?,
            tolerance_rule: v
                .get("tolerance_rule")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            step_error: opt_num(v, "step_error")?,
            batch: uint(v, "batch")?,
            nfe_full: uint(v, "nfe_full")?,
            cost: Cost {
                reference: uint(cost, "reference")?,
                step_check: uint(cost, "step_check")?,
                candidates: uint(cost, "candidates")?,
                total: uint(cost, "total")?,
            },
            denoiser_gap: nums(v, "denoiser_gap")?,
            candidates,
            levels,
        })
    }
}

fn num(v: &Value, key: &str) -> Result<f64, String> {
    v.get(key)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("`{key}` is missing or not a finite number"))
}

/// An optional number: absent or null is `None` (files of earlier versions lack some).
fn opt_num(v: &Value, key: &str) -> Result<Option<f64>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => num(v, key).map(Some),
    }
}

fn uint(v: &Value, key: &str) -> Result<usize, String> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| format!("`{key}` is missing or not a whole number"))
}

fn nums(v: &Value, key: &str) -> Result<Vec<f64>, String> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{key}` is missing or not a list"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("`{key}` holds a value that is not a finite number"))
        })
        .collect()
}
