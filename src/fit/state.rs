//! Exported accumulator state: [`Moments`] and [`Sketch`] as bytes (a safetensors image, so
//! any safetensors reader can inspect it), to move shards between processes or machines and
//! merge them there. Importing checks every shape, number and identity, like a model file.
//!
//! Moments: tensors `mean` [dim] and `scatter` [dim, dim] (f64); metadata `format` =
//! `gaussskip-moments`, `format_version`, `count`.
//!
//! Sketch: tensors `mean` [dim], `y` [width, dim] (row j = column j of Y), `test` [width, dim]
//! (only after pass 1; pass 1's test matrix is regenerated from the seed) and `first_mean`
//! [dim] (after pass 1), all f64; metadata `format` = `gaussskip-sketch`, `format_version`,
//! `dim`, `rank`, `width`, `passes`, `seed`, `pass`, `test_id`, `count`, `trace`, and after
//! pass 1 `first_count`, `first_trace`.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use faer::Mat;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::sketch::{matrix_id, FirstPass, PassSums};
use super::{Moments, Sketch, SketchOptions};
use crate::error::{Error, Result};

const MOMENTS_FORMAT: &str = "gaussskip-moments";
const SKETCH_FORMAT: &str = "gaussskip-sketch";
const STATE_VERSION: &str = "1";

fn label(format: &str) -> &Path {
    Path::new(if format == MOMENTS_FORMAT {
        "<moments state>"
    } else {
        "<sketch state>"
    })
}

fn bytes_of(values: impl Iterator<Item = f64>) -> Vec<u8> {
    values.flat_map(f64::to_le_bytes).collect()
}

/// Serialises named f64 tensors with metadata.
fn serialize(
    format: &str,
    tensors: Vec<(&str, Vec<usize>, Vec<u8>)>,
    meta: Vec<(&str, String)>,
) -> Result<Vec<u8>> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F64, shape.clone(), data)
                .expect("state tensor sizes are consistent by construction");
            (*name, view)
        })
        .collect();
    let mut map: HashMap<String, String> =
        meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    map.insert("format".into(), format.into());
    map.insert("format_version".into(), STATE_VERSION.into());
    safetensors::tensor::serialize(views, Some(map))
        .map_err(|e| Error::format(label(format), format!("cannot serialise: {e}")))
}

/// A parsed state image: its metadata and f64 tensors, checked for format and finiteness.
struct Image<'a> {
    format: &'static str,
    meta: HashMap<String, String>,
    st: SafeTensors<'a>,
}

impl<'a> Image<'a> {
    fn parse(bytes: &'a [u8], format: &'static str) -> Result<Image<'a>> {
        let bad = |why: String| Error::format(label(format), why);
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a valid state image: {e}")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid state image: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get("format").map(String::as_str) {
            Some(f) if f == format => {}
            other => return Err(bad(format!("format is {other:?}, expected {format:?}"))),
        }
        match meta.get("format_version").map(String::as_str) {
            Some(STATE_VERSION) => {}
            other => {
                return Err(bad(format!(
                    "format_version {other:?} is not supported (this build reads {STATE_VERSION:?})"
                )))
            }
        }
        Ok(Image { format, meta, st })
    }

    fn bad(&self, why: String) -> Error {
        Error::format(label(self.format), why)
    }

    fn num<T: FromStr>(&self, key: &str) -> Result<T> {
        let text = self
            .meta
            .get(key)
            .ok_or_else(|| self.bad(format!("metadata {key} is missing")))?;
        text.parse()
            .map_err(|_| self.bad(format!("metadata {key} {text:?} is not a valid number")))
    }

    /// An f64 tensor of exactly `shape`, all finite.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| self.bad(format!("tensor `{name}` is missing")))?;
        if t.dtype() != Dtype::F64 || t.shape() != shape {
            return Err(self.bad(format!(
                "tensor `{name}` is {:?} {:?}, expected F64 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        let values: Vec<f64> = t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.bad(format!("tensor `{name}` holds NaN or Inf at {i}")));
        }
        Ok(values)
    }
}

impl Moments {
    /// The whole state as bytes (count, mean, scatter; a safetensors image), for
    /// [`Moments::from_bytes`] in another process. Size: about 8·dim² bytes.
    ///
    /// # Errors
    /// `FileFormat` when the image cannot be built (sizes beyond the format's range).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let d = self.dim;
        let scatter = bytes_of(
            (0..d)
                .flat_map(|i| (0..d).map(move |j| (i, j)))
                .map(|(i, j)| self.scatter[(i, j)]),
        );
        serialize(
            MOMENTS_FORMAT,
            vec![
                ("mean", vec![d], bytes_of(self.mean.iter().copied())),
                ("scatter", vec![d, d], scatter),
            ],
            vec![("count", self.count.to_string())],
        )
    }

    /// Moments from [`Moments::to_bytes`].
    ///
    /// # Errors
    /// `FileFormat` naming what is wrong: not a moments image, another version, missing or
    /// mis-shaped tensors, NaN/Inf, a scatter matrix that is not symmetric with a
    /// non-negative diagonal, or a count that does not fit the data.
    pub fn from_bytes(bytes: &[u8]) -> Result<Moments> {
        let img = Image::parse(bytes, MOMENTS_FORMAT)?;
        let count: u64 = img.num("count")?;
        let mean_shape = img
            .st
            .tensor("mean")
            .map_err(|_| img.bad("tensor `mean` is missing".into()))?
            .shape()
            .to_vec();
        let d = match mean_shape.as_slice() {
            [d] if *d > 0 => *d,
            other => {
                return Err(img.bad(format!("tensor `mean` has shape {other:?}, expected [dim]")))
            }
        };
        let mean = img.tensor("mean", &[d])?;
        let scatter = img.tensor("scatter", &[d, d])?;
        let s = |i: usize, j: usize| scatter[i * d + j];
        for i in 0..d {
            if s(i, i) < 0.0 {
                return Err(img.bad(format!("scatter[{i}, {i}] = {} is negative", s(i, i))));
            }
            for j in 0..i {
                let tol = 1e-9 * (s(i, i) * s(j, j)).sqrt() + f64::MIN_POSITIVE;
                if (s(i, j) - s(j, i)).abs() > tol {
                    return Err(img.bad(format!("scatter is not symmetric at [{i}, {j}]")));
                }
            }
        }
        if count == 0 && (mean.iter().any(|&m| m != 0.0) || scatter.iter().any(|&v| v != 0.0)) {
            return Err(img.bad("count is 0 but the sums are not empty".into()));
        }
        Ok(Moments {
            dim: d,
            count,
            mean,
            scatter: Mat::from_fn(d, d, s),
        })
    }
}

/// `dim x width` matrix → `[width, dim]` bytes (each column contiguous).
fn columns_bytes(m: &Mat<f64>) -> Vec<u8> {
    bytes_of((0..m.ncols()).flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)])))
}

fn from_columns(values: &[f64], dim: usize, width: usize) -> Mat<f64> {
    Mat::from_fn(dim, width, |i, j| values[j * dim + i])
}

impl Sketch {
    /// The whole state as bytes (plan, pass, test matrix after pass 1, sums; a safetensors
    /// image) for [`Sketch::from_bytes`] in another process: a worker imports the state a pass
    /// started from, adds its shard and exports; the coordinator imports and merges. Sums on a
    /// device are included. Size: about 16·dim·width bytes (8·dim·width in pass 1).
    ///
    /// # Errors
    /// `Cuda` when a device's sums cannot be read; `FileFormat` when the image cannot be
    /// built.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let sums = self.totals()?;
        let d = self.dim;
        let mut tensors = vec![
            ("mean", vec![d], bytes_of(sums.mean.iter().copied())),
            ("y", vec![self.width, d], columns_bytes(&sums.y)),
        ];
        let mut meta = vec![
            ("dim", d.to_string()),
            ("rank", self.opts.rank.to_string()),
            ("width", self.width.to_string()),
            ("passes", self.opts.passes.to_string()),
            ("seed", self.opts.seed.to_string()),
            ("pass", self.pass.to_string()),
            ("test_id", self.test_id.to_string()),
            ("count", sums.count.to_string()),
            ("trace", format!("{:?}", sums.trace)),
        ];
        if self.pass > 1 {
            tensors.push(("test", vec![self.width, d], columns_bytes(&self.test)));
        }
        if let Some(first) = &self.first {
            tensors.push(("first_mean", vec![d], bytes_of(first.mean.iter().copied())));
            meta.push(("first_count", first.count.to_string()));
            meta.push(("first_trace", format!("{:?}", first.trace)));
        }
        serialize(SKETCH_FORMAT, tensors, meta)
    }

    /// A sketch from [`Sketch::to_bytes`] (on the host, whatever device the exporter used).
    ///
    /// # Errors
    /// `FileFormat` naming what is wrong: not a sketch image, another version, an
    /// inconsistent plan, missing or mis-shaped tensors, NaN/Inf, or a test matrix that does
    /// not match its identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sketch> {
        let img = Image::parse(bytes, SKETCH_FORMAT)?;
        let dim: usize = img.num("dim")?;
        let opts = SketchOptions {
            rank: img.num("rank")?,
            oversampling: None,
            passes: img.num("passes")?,
            seed: img.num("seed")?,
        };
        let width: usize = img.num("width")?;
        let pass: u32 = img.num("pass")?;
        if width < opts.rank || width > dim || pass == 0 || pass > opts.passes {
            return Err(img.bad(format!(
                "inconsistent plan: dim {dim}, rank {}, width {width}, pass {pass} of {}",
                opts.rank, opts.passes
            )));
        }
        let mut sketch = Sketch::new(
            dim,
            &SketchOptions {
                oversampling: Some(width - opts.rank),
                ..opts
            },
        )
        .map_err(|e| img.bad(format!("inconsistent plan: {e}")))?;
        let test_id: u64 = img.num("test_id")?;
        if pass > 1 {
            let w = from_columns(&img.tensor("test", &[width, dim])?, dim, width);
            if matrix_id(w.as_ref()) != test_id {
                return Err(img.bad("the test matrix does not match its test_id".into()));
            }
            sketch.test = w;
            sketch.test_id = test_id;
            sketch.first = Some(FirstPass {
                count: img.num("first_count")?,
                mean: img.tensor("first_mean", &[dim])?,
                trace: img.num("first_trace")?,
            });
        } else if test_id != sketch.test_id {
            return Err(img.bad("test_id does not match the seed's test matrix".into()));
        }
        sketch.pass = pass;
        let trace: f64 = img.num("trace")?;
        if !(trace >= 0.0 && trace.is_finite()) {
            return Err(img.bad(format!("trace {trace} is not a finite non-negative number")));
        }
        sketch.sums = PassSums {
            count: img.num("count")?,
            mean: img.tensor("mean", &[dim])?,
            y: from_columns(&img.tensor("y", &[width, dim])?, dim, width),
            trace,
        };
        Ok(sketch)
    }
}
