//! The model file (SPEC §7): safetensors with the tensors of every component and the
//! metadata keys of the README's "Model file" section, written atomically.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use safetensors::tensor::{Dtype, Metadata, TensorInfo, TensorView};

use super::{
    parse_item_shape, FitInfo, Model, ModelMeta, FILE_FORMAT, FILE_FORMAT_VERSION, NEXT_ID,
};
use crate::error::{Error, Result};

impl Model {
    /// Writes the model as safetensors, atomically (a temporary file in the same folder,
    /// flushed, then renamed over `path`).
    ///
    /// # Errors
    /// `Io` when the folder is not writable or the disk is full; the target is untouched then.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let f64_bytes = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let parts: Vec<&Model> = (0..self.n_components()).map(|k| self.part(k)).collect();
        let bytes: Vec<[Vec<u8>; 4]> = parts
            .iter()
            .map(|c| {
                [
                    f32_bytes(&c.mean),
                    f64_bytes(&c.eigvals),
                    f32_bytes(&c.eigvecs),
                    f64_bytes(&[c.residual_var]),
                ]
            })
            .collect();
        let mut tensors = Vec::new();
        for (k, (c, b)) in parts.iter().zip(&bytes).enumerate() {
            let view = |dtype, shape, data| {
                TensorView::new(dtype, shape, data)
                    .expect("tensor sizes are consistent by construction")
            };
            let [mean, eigvals, eigvecs, resid] = b;
            tensors.push((tensor_name("mean", k), view(Dtype::F32, vec![c.dim], mean)));
            tensors.push((
                tensor_name("eigvals", k),
                view(Dtype::F64, vec![c.rank], eigvals),
            ));
            tensors.push((
                tensor_name("eigvecs", k),
                view(Dtype::F32, vec![c.rank, c.dim], eigvecs),
            ));
            tensors.push((
                tensor_name("residual_var", k),
                view(Dtype::F64, vec![], resid),
            ));
        }
        let meta: HashMap<String, String> = self.file_metadata().into_iter().collect();
        let bytes = safetensors::tensor::serialize(tensors, Some(meta))
            .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Reads and validates a model file. Tensors are read straight into the model's arrays:
    /// loading needs about the file's size in memory, plus a small buffer.
    ///
    /// # Errors
    /// `Io` when the file cannot be read; `FileFormat` naming the file and what is wrong:
    /// truncated or corrupt safetensors (including duplicate keys in its header), a missing
    /// tensor, a wrong dtype or shape, a wrong format name or version, or any validation
    /// failure of [`Model::from_parts`]; `OutOfMemory` when the arrays cannot be allocated.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Self::read_from(std::io::BufReader::new(file), len, path)
    }

    /// Reads and validates a model file held in memory; `name` labels errors. As
    /// [`Model::load`].
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn from_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<Model> {
        Self::read_from(
            std::io::Cursor::new(bytes),
            bytes.len() as u64,
            name.as_ref(),
        )
    }

    fn read_from(mut reader: impl Read + Seek, len: u64, path: &Path) -> Result<Model> {
        let bad = |reason: String| Error::format(path, reason);
        let header = crate::safetensors_header::read(&mut reader, len, path)?;
        let meta_map = header.meta.metadata().clone().unwrap_or_default();
        match meta_map.get("format").map(String::as_str) {
            Some(FILE_FORMAT) => {}
            Some(other) => {
                return Err(bad(format!(
                    "metadata format is {other:?}, expected {FILE_FORMAT:?}"
                )))
            }
            None => {
                return Err(bad(format!(
                    "metadata key `format` is missing (expected {FILE_FORMAT:?})"
                )))
            }
        }
        let version = meta_map
            .get("format_version")
            .map(String::as_str)
            .unwrap_or("");
        let components = match version {
            "1" => vec![(String::new(), None)],
            "2" => parse_components(meta_map.get("components").map(String::as_str)).map_err(bad)?,
            _ => {
                return Err(bad(format!(
                    "format_version {version:?} is not supported (this build reads versions 1 and {FILE_FORMAT_VERSION})"
                )))
            }
        };
        let expected: std::collections::HashSet<String> = (0..components.len())
            .flat_map(|k| TENSORS.iter().map(move |t| tensor_name(t, k)))
            .collect();
        let mut names: Vec<String> = header.meta.tensors().keys().cloned().collect();
        names.sort();
        if let Some(extra) = names.iter().find(|n| !expected.contains(n.as_str())) {
            return Err(bad(format!(
                "tensor `{extra}` is not part of a model of {} component(s)",
                components.len()
            )));
        }
        let item_shape =
            parse_item_shape(meta_map.get("item_shape").map(String::as_str).unwrap_or(""))
                .map_err(|e| bad(format!("metadata item_shape: {e}")))?;
        let sample_count = match meta_map.get("sample_count").map(String::as_str) {
            None | Some("") => 0,
            Some(s) => s
                .parse()
                .map_err(|_| bad(format!("metadata sample_count {s:?} is not a whole number")))?,
        };
        let meta = ModelMeta {
            item_shape,
            value_space: meta_map.get("value_space").cloned().unwrap_or_default(),
            sample_count,
            source: meta_map.get("source").cloned().unwrap_or_default(),
            fit: FitInfo::from_metadata(&meta_map).map_err(bad)?,
            calibrations: match meta_map.get(crate::calibrate::store::METADATA_KEY) {
                Some(text) => crate::calibrate::Calibrations::from_json(text).map_err(bad)?,
                None => Default::default(),
            },
        };
        let counted: Option<u64> = components
            .iter()
            .try_fold(0u64, |a, (_, c)| a.checked_add(c.unwrap_or(0)));
        if version == "2" && counted != Some(sample_count) {
            return Err(bad(format!(
                "metadata sample_count {sample_count} is not the sum of the components' counts"
            )));
        }
        let mut tensors = TensorReader {
            reader,
            meta: &header.meta,
            data_start: header.data_start,
            path,
        };
        let mut parts = Vec::with_capacity(components.len());
        let mut dim = None;
        for (k, (label, count)) in components.into_iter().enumerate() {
            let name = |t: &str| tensor_name(t, k);
            let mean_shape = tensors.shape(&name("mean"), 1)?;
            let vals_shape = tensors.shape(&name("eigvals"), 1)?;
            let vecs_shape = tensors.shape(&name("eigvecs"), 2)?;
            tensors.shape(&name("residual_var"), 0)?;
            if vecs_shape != [vals_shape[0], mean_shape[0]] {
                return Err(bad(format!(
                    "tensor `{}` has shape {vecs_shape:?}, expected [{}, {}] (eigvals x mean)",
                    name("eigvecs"),
                    vals_shape[0],
                    mean_shape[0]
                )));
            }
            if *dim.get_or_insert(mean_shape[0]) != mean_shape[0] {
                return Err(bad(format!(
                    "tensor `{}` has {} values, but component 0 has dim {}",
                    name("mean"),
                    mean_shape[0],
                    dim.unwrap_or(0)
                )));
            }
            let mean = tensors.read(&name("mean"), |v| v as f32)?;
            let eigvals = tensors.read(&name("eigvals"), |v| v)?;
            let eigvecs = tensors.read(&name("eigvecs"), |v| v as f32)?;
            let resid = tensors.read(&name("residual_var"), |v| v)?;
            let part_meta = ModelMeta {
                sample_count: count.unwrap_or(sample_count),
                ..meta.clone()
            };
            let part = Model::from_parts(mean, eigvals, eigvecs, resid[0], part_meta).map_err(
                |e| match e {
                    e @ Error::OutOfMemory(_) => e,
                    e if k == 0 => bad(e.to_string()),
                    e => bad(format!("component {k}: {e}")),
                },
            )?;
            parts.push(part.with_label(label));
        }
        Model::from_components(parts, meta).map_err(|e| bad(e.to_string()))
    }
}

/// The tensors of one component, named with a suffix `.k` for components k >= 1.
const TENSORS: [&str; 4] = ["mean", "eigvals", "eigvecs", "residual_var"];

/// `mean` for component 0, `mean.3` for component 3: component 0 keeps the names of a
/// version-1 file.
fn tensor_name(base: &str, k: usize) -> String {
    if k == 0 {
        base.to_string()
    } else {
        format!("{base}.{k}")
    }
}

/// The `components` metadata key: a JSON list of `{"label": text, "count": items}`.
fn parse_components(text: Option<&str>) -> std::result::Result<Vec<(String, Option<u64>)>, String> {
    let text = text.ok_or("metadata key `components` is missing (format_version 2)")?;
    let bad = |why: &str| format!("metadata components: {why}");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| bad(&format!("not a JSON list ({e})")))?;
    if list.is_empty() || list.len() > super::MAX_COMPONENTS {
        return Err(bad(&format!(
            "holds {} entries, expected 1..={}",
            list.len(),
            super::MAX_COMPONENTS
        )));
    }
    list.iter()
        .enumerate()
        .map(|(k, v)| {
            let label = v.get("label").and_then(|l| l.as_str());
            let count = v.get("count").and_then(|c| c.as_u64());
            match (label, count) {
                (Some(l), Some(c)) => Ok((l.to_string(), Some(c))),
                _ => Err(bad(&format!(
                    "entry {k} is not {{\"label\": text, \"count\": whole number}}"
                ))),
            }
        })
        .collect()
}

/// Reads the tensors of a model file whose header has been checked.
struct TensorReader<'a, R> {
    reader: R,
    meta: &'a Metadata,
    data_start: u64,
    path: &'a Path,
}

impl<R: Read + Seek> TensorReader<'_, R> {
    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.meta
            .info(name)
            .ok_or_else(|| Error::format(self.path, format!("tensor `{name}` is missing")))
    }

    /// The shape of tensor `name`, which must have `dims` dimensions and an f32 or f64 dtype.
    fn shape(&self, name: &str, dims: usize) -> Result<Vec<usize>> {
        let t = self.info(name)?;
        if t.shape.len() != dims {
            return Err(Error::format(
                self.path,
                format!(
                    "tensor `{name}` has shape {}, expected {dims} dimension(s)",
                    crate::npy::show_shape(&t.shape)
                ),
            ));
        }
        if !matches!(t.dtype, Dtype::F32 | Dtype::F64) {
            return Err(Error::format(
                self.path,
                format!(
                    "tensor `{name}` has dtype {:?}, expected F32 or F64",
                    t.dtype
                ),
            ));
        }
        Ok(t.shape.clone())
    }

    /// Reads tensor `name` (f32 or f64, checked by [`TensorReader::shape`]) into a vector of
    /// `T` through a small buffer, converting each element with `conv`.
    fn read<T>(&mut self, name: &str, conv: impl Fn(f64) -> T) -> Result<Vec<T>> {
        const CHUNK: usize = 1 << 16;
        let t = self.info(name)?;
        let (start, end) = t.data_offsets;
        let size = t.dtype.bitsize() / 8;
        let f64s = t.dtype == Dtype::F64;
        let count = (end - start) / size;
        let mut out = Vec::new();
        // Room to move the values to a cache line in place (`AlignedF32`) without a copy.
        let room = crate::aligned::LINE / 4;
        out.try_reserve_exact(count + room).map_err(|_| {
            Error::OutOfMemory(format!(
                "{}: tensor `{name}` of {count} elements",
                self.path.display()
            ))
        })?;
        let io = |e| Error::io(self.path, e);
        self.reader
            .seek(SeekFrom::Start(self.data_start + start as u64))
            .map_err(io)?;
        let mut buf = vec![0u8; CHUNK * size];
        let mut left = count;
        while left > 0 {
            let n = left.min(CHUNK);
            let bytes = &mut buf[..n * size];
            self.reader.read_exact(bytes).map_err(io)?;
            out.extend(bytes.chunks_exact(size).map(|b| {
                conv(if f64s {
                    f64::from_le_bytes(b.try_into().expect("8 bytes"))
                } else {
                    f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes")))
                })
            }));
            left -= n;
        }
        Ok(out)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees a half-written file and a failure leaves the old file in place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::arg("path", format!("{} has no file name", path.display())))?;
    // Keep the temporary name short enough for any legal target name (255-byte limit).
    let stem: String = name.to_string_lossy().chars().take(64).collect();
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        stem,
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}
