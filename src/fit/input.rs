//! Streaming datasets into [`Moments`]: a folder of PNG/JPEG images, a `.npy` array, an array
//! inside a `.npz` archive, or a tensor in a `.safetensors` file.
//!
//! Arrays are `items x ...`: the first axis counts items, the rest is the item shape. Images
//! become channel-major `[channels, height, width]` items (grey: 1 channel, colour: 3; an
//! alpha channel is dropped, 16-bit PNGs are reduced to 8 bits). No reader holds more than a
//! few thousand items at a time.

use std::fs;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use safetensors::tensor::Dtype as StDtype;

use super::Moments;
use crate::error::{Error, Result};
use crate::npy::{NpyDtype, NpyReader};

/// Values handed to [`Moments`] per read: bounds memory whatever the item size.
const CHUNK_VALUES: usize = 1 << 22;
/// Images decoded in parallel per step.
const IMAGE_CHUNK: usize = 256;

/// A linear map of values from one interval to another, e.g. `0,255:-1,1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    /// Source interval (lo, hi).
    pub from: (f64, f64),
    /// Target interval (lo, hi).
    pub to: (f64, f64),
}

impl Scale {
    /// [0, 255] → [-1, 1], the usual pixel convention of diffusion models.
    pub const PIXELS: Scale = Scale {
        from: (0.0, 255.0),
        to: (-1.0, 1.0),
    };

    /// Maps one value.
    pub fn apply(&self, v: f64) -> f64 {
        self.to.0 + (v - self.from.0) * (self.to.1 - self.to.0) / (self.from.1 - self.from.0)
    }

    /// The value space recorded in the model file, e.g. `[-1,1]`.
    pub fn value_space(&self) -> String {
        format!("[{},{}]", self.to.0, self.to.1)
    }
}

impl FromStr for Scale {
    type Err = Error;

    /// Parses `FROM_LO,FROM_HI:TO_LO,TO_HI`.
    fn from_str(s: &str) -> Result<Scale> {
        let bad = |why: &str| {
            Error::arg(
                "scale",
                format!("`{s}`: {why} (expected FROM_LO,FROM_HI:TO_LO,TO_HI, e.g. 0,255:-1,1)"),
            )
        };
        let pair = |part: &str| -> Result<(f64, f64)> {
            let mut it = part.split(',').map(|v| v.trim().parse::<f64>());
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(a)), Some(Ok(b)), None) if a.is_finite() && b.is_finite() => Ok((a, b)),
                _ => Err(bad("each side needs two finite numbers")),
            }
        };
        let (from, to) = s.split_once(':').ok_or_else(|| bad("missing `:`"))?;
        let scale = Scale {
            from: pair(from)?,
            to: pair(to)?,
        };
        if scale.from.0 == scale.from.1 || scale.to.0 == scale.to.1 {
            return Err(bad("an interval is empty"));
        }
        Ok(scale)
    }
}

/// How to read a dataset.
#[derive(Clone, Debug, Default)]
pub struct InputOptions {
    /// Value map; `None` means [`Scale::PIXELS`] for images and values as stored for arrays.
    pub scale: Option<Scale>,
    /// Which array of a `.npz` / tensor of a `.safetensors` file; needed when there are
    /// several.
    pub key: Option<String>,
    /// Show a progress bar (items/s, ETA) on standard error.
    pub progress: bool,
}

/// A dataset streamed into moments.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The moments of every item.
    pub moments: Moments,
    /// Shape of one item (channels, height, width for images).
    pub item_shape: Vec<usize>,
    /// The value space the items were mapped to, for the model file.
    pub value_space: String,
}

/// Streams the dataset at `path` into [`Moments`].
///
/// # Errors
/// `Io` for unreadable paths; `Dataset` for an empty folder, images of different shapes,
/// an array without an item axis or without items, a missing or ambiguous key, NaN/Inf
/// values; `FileFormat` naming the file for a corrupt image, array or safetensors file;
/// `UnsupportedDtype` for a non-numeric safetensors tensor (a non-numeric `.npy` is a
/// `FileFormat` error naming its dtype).
pub fn moments_from_path(path: &Path, opts: &InputOptions) -> Result<Loaded> {
    let mut moments: Option<Moments> = None;
    let (item_shape, value_space) = stream(path, opts, "reading", &mut |rows, dim| {
        moments
            .get_or_insert_with(|| Moments::new(dim))
            .add_rows_f64(rows)
    })?;
    Ok(Loaded {
        moments: moments.expect("a dataset has at least one item"),
        item_shape,
        value_space,
    })
}

/// A whole dataset read into memory (for the ideal denoiser, which needs every item).
#[derive(Clone, Debug)]
pub struct Rows {
    /// Row-major `items x dim` values after the scale.
    pub rows: Vec<f32>,
    /// Shape of one item.
    pub item_shape: Vec<usize>,
    /// The value space the items were mapped to.
    pub value_space: String,
}

/// Reads the dataset at `path` (the inputs of [`moments_from_path`]) into memory.
///
/// # Errors
/// As [`moments_from_path`].
pub fn rows_from_path(path: &Path, opts: &InputOptions) -> Result<Rows> {
    let mut rows = Vec::new();
    let (item_shape, value_space) = stream(path, opts, "reading", &mut |chunk, _| {
        crate::error::check_finite("rows", chunk)?;
        rows.extend(chunk.iter().map(|&v| v as f32));
        Ok(())
    })?;
    Ok(Rows {
        rows,
        item_shape,
        value_space,
    })
}

/// Receives scaled row-major chunks and the item length.
pub(super) type Sink<'a> = dyn FnMut(&[f64], usize) -> Result<()> + Send + 'a;

/// Reads any supported input front to back into `sink` (row-major chunks of whole items after
/// the scale, and the item length); returns (item shape, value space). `label` starts the
/// progress bar's line (e.g. "pass 2/4").
pub(super) fn stream(
    path: &Path,
    opts: &InputOptions,
    label: &str,
    sink: &mut Sink<'_>,
) -> Result<(Vec<usize>, String)> {
    crate::pool::install(|| stream_in_pool(path, opts, label, false, sink))
}

/// The values of a one-dimensional array (a `.npy` file, or the array `key` of a `.npz` or
/// `.safetensors` file): e.g. one label per item. Arrays of `n x 1` are read as well.
pub(super) fn flat_array(path: &Path, key: Option<&str>) -> Result<Vec<f64>> {
    let opts = InputOptions {
        scale: None,
        key: key.map(str::to_string),
        progress: false,
    };
    let mut values = Vec::new();
    let mut sink = |chunk: &[f64], _dim: usize| -> Result<()> {
        values.extend_from_slice(chunk);
        Ok(())
    };
    let (shape, _) = stream_in_pool(path, &opts, "labels", true, &mut sink)?;
    if shape.iter().product::<usize>() != 1 {
        return Err(Error::Dataset(format!(
            "{}: expected one value per item, got items of shape {}",
            path.display(),
            show_shape(&shape)
        )));
    }
    Ok(values)
}

/// `flat`: a one-dimensional array is items of one value (for labels), not an error.
fn stream_in_pool(
    path: &Path,
    opts: &InputOptions,
    label: &str,
    flat: bool,
    sink: &mut Sink<'_>,
) -> Result<(Vec<usize>, String)> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return from_images(path, opts, label, sink);
    }
    if is_csv(path) {
        let scale = opts.scale.unwrap_or(Scale::PIXELS);
        let show = opts.progress.then_some(label);
        let dim = read_csv(path, scale, show, &mut |rows, dim, _labels| sink(rows, dim))?;
        return Ok((csv_item_shape(dim), scale.value_space()));
    }
    let ext = extension(path);
    match ext.as_str() {
        "npy" => {
            let reader = NpyReader::open(path)?;
            from_array(path, opts, label, flat, reader, sink)
        }
        "npz" => from_npz(path, opts, label, flat, sink),
        "safetensors" => from_safetensors(path, opts, label, flat, sink),
        _ => Err(Error::arg(
            "input",
            format!(
                "{}: expected a folder of images, .csv (.gz), .npy, .npz or .safetensors",
                path.display()
            ),
        )),
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn bar(len: u64, what: &str, label: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {what} ({{per_sec}}, {{eta}} left)"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// Splits an array shape into (items, item shape).
fn split_shape(path: &Path, shape: &[usize], flat: bool) -> Result<(usize, Vec<usize>, usize)> {
    if flat && shape.len() == 1 {
        return split_shape(path, &[shape[0], 1], false);
    }
    if shape.len() < 2 {
        return Err(Error::Dataset(format!(
            "{}: array of shape {} has no item axis; expected items x values (2 or more dims)",
            path.display(),
            crate::npy::show_shape(shape)
        )));
    }
    let dim = crate::npy::element_count(&shape[1..]).ok_or_else(|| {
        Error::Dataset(format!(
            "{}: array of shape {} has items too large to count",
            path.display(),
            crate::npy::show_shape(shape)
        ))
    })?;
    if shape[0] == 0 || dim == 0 {
        return Err(Error::Dataset(format!(
            "{}: array of shape {} holds no items",
            path.display(),
            crate::npy::show_shape(shape)
        )));
    }
    Ok((shape[0], shape[1..].to_vec(), dim))
}

fn from_array(
    path: &Path,
    opts: &InputOptions,
    label: &str,
    flat: bool,
    mut source: NpyReader<impl Read>,
    sink: &mut Sink<'_>,
) -> Result<(Vec<usize>, String)> {
    let (items, item_shape, dim) = split_shape(path, source.shape(), flat)?;
    let rows_per_chunk = (CHUNK_VALUES / dim).max(1);
    let pb = bar(items as u64, "items", label, opts.progress);
    let mut buf = Vec::with_capacity(rows_per_chunk * dim);
    let mut done = 0;
    while done < items {
        let rows = rows_per_chunk.min(items - done);
        buf.clear();
        // The reader returns short only at the array's end, which `items` never passes;
        // data missing from the file is its FileFormat error.
        source.read_f64(rows * dim, &mut buf)?;
        if let Some(s) = opts.scale {
            buf.iter_mut().for_each(|v| *v = s.apply(*v));
        }
        sink(&buf, dim).map_err(|e| match e {
            Error::NonFinite { index, .. } => Error::Dataset(format!(
                "{}: item {} holds NaN or Inf",
                path.display(),
                done + index / dim
            )),
            other => other,
        })?;
        done += rows;
        pb.set_position(done as u64);
    }
    pb.finish_and_clear();
    let space = opts
        .scale
        .map_or_else(|| "as stored".to_string(), |s| s.value_space());
    Ok((item_shape, space))
}

fn from_npz(
    path: &Path,
    opts: &InputOptions,
    label: &str,
    flat: bool,
    sink: &mut Sink<'_>,
) -> Result<(Vec<usize>, String)> {
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| Error::format(path, format!("not a readable .npz (zip) archive: {e}")))?;
    let names: Vec<String> = zip
        .file_names()
        .filter(|n| n.ends_with(".npy"))
        .map(str::to_string)
        .collect();
    let entry = pick(path, &names, opts.key.as_deref(), |n| {
        n.strip_suffix(".npy").unwrap_or(n).to_string()
    })?;
    let inner = PathBuf::from(format!("{}:{entry}", path.display()));
    let reader = zip
        .by_name(&entry)
        .map_err(|e| Error::format(&inner, format!("cannot open the array: {e}")))?;
    let npy = NpyReader::from_reader(reader, &inner)?;
    from_array(&inner, opts, label, flat, npy, sink)
}

/// Chooses the array named by `key` (compared with `short` names), or the only one.
fn pick(
    path: &Path,
    names: &[String],
    key: Option<&str>,
    short: impl Fn(&str) -> String,
) -> Result<String> {
    let list = || {
        names
            .iter()
            .map(|n| short(n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match key {
        Some(k) => names
            .iter()
            .find(|n| short(n) == k || n.as_str() == k)
            .cloned()
            .ok_or_else(|| {
                Error::Dataset(format!(
                    "{}: no array named `{k}` (has: {})",
                    path.display(),
                    list()
                ))
            }),
        None => match names {
            [only] => Ok(only.clone()),
            [] => Err(Error::Dataset(format!(
                "{}: holds no arrays",
                path.display()
            ))),
            _ => Err(Error::Dataset(format!(
                "{}: holds several arrays ({}); choose one with --key",
                path.display(),
                list()
            ))),
        },
    }
}

fn from_safetensors(
    path: &Path,
    opts: &InputOptions,
    label: &str,
    flat: bool,
    sink: &mut Sink<'_>,
) -> Result<(Vec<usize>, String)> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let header = crate::safetensors_header::read(&mut file, file_len, path)?;
    let meta = &header.meta;
    let mut names: Vec<String> = meta.tensors().keys().cloned().collect();
    names.sort();
    let name = pick(path, &names, opts.key.as_deref(), str::to_string)?;
    let info = meta.info(&name).expect("picked from the tensor list");
    let dtype = info.dtype;
    let npy_dtype = match dtype {
        StDtype::BOOL => NpyDtype::Bool,
        StDtype::U8 => NpyDtype::U8,
        StDtype::I8 => NpyDtype::I8,
        StDtype::U16 => NpyDtype::U16,
        StDtype::I16 => NpyDtype::I16,
        StDtype::U32 => NpyDtype::U32,
        StDtype::I32 => NpyDtype::I32,
        StDtype::U64 => NpyDtype::U64,
        StDtype::I64 => NpyDtype::I64,
        StDtype::F16 => NpyDtype::F16,
        StDtype::BF16 => NpyDtype::BF16,
        StDtype::F32 => NpyDtype::F32,
        StDtype::F64 => NpyDtype::F64,
        _ => {
            return Err(Error::UnsupportedDtype(format!(
                "{}: tensor `{name}` has dtype {dtype:?}; expected an integer or float type",
                path.display()
            )))
        }
    };
    // The header reader checked that the offsets tile the data and match every shape.
    let (start, end) = info.data_offsets;
    file.seek(SeekFrom::Start(header.data_start + start as u64))
        .map_err(|e| Error::io(path, e))?;
    let inner = PathBuf::from(format!("{}:{name}", path.display()));
    let source = NpyReader::raw(
        BufReader::new(file).take((end - start) as u64),
        &inner,
        info.shape.clone(),
        npy_dtype,
    );
    from_array(&inner, opts, label, flat, source, sink)
}

/// True for a CSV dataset: a file named `.csv`, `.csv.gz` or `.gz` (see [`read_csv`]).
pub fn is_csv(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".csv") || name.ends_with(".gz")
}

/// The item shape of a CSV dataset of `dim` values: (1, s, s) for d = s² (grey), (3, s, s)
/// for d = 3 s² (RGB, channel-major), otherwise `[dim]`.
pub fn csv_item_shape(dim: usize) -> Vec<usize> {
    for c in [1, 3] {
        if dim.is_multiple_of(c) {
            let s = ((dim / c) as f64).sqrt().round() as usize;
            if s * s * c == dim {
                return vec![c, s, s];
            }
        }
    }
    vec![dim]
}

/// Receives CSV rows (scaled, row-major), the item length and one label per row.
pub type CsvSink<'a> = dyn FnMut(&[f64], usize, &[i64]) -> Result<()> + Send + 'a;

/// Streams a CSV dataset in the layout of the bundled MNIST file into `sink`, a few thousand
/// rows at a time: one item per line, its values 0–255 (integers or decimals, mapped by
/// `scale`), then an integer label; gzip-compressed when the file starts with the gzip magic
/// bytes. Returns the number of values per item. With `progress`, a spinner on stderr shows
/// that text and the items read so far (e.g. `"reading"`, `"pass 2/3"`).
///
/// # Errors
/// `Io` when the file cannot be read; `FileFormat` naming the line for a field that is not a
/// number, a value outside [0, 255], a line with another number of fields than the first,
/// or a corrupt gzip stream; `Dataset` for a file without items; the sink's errors.
pub fn read_csv(
    path: &Path,
    scale: Scale,
    progress: Option<&str>,
    sink: &mut CsvSink<'_>,
) -> Result<usize> {
    use std::io::BufRead;
    const ROWS_PER_CHUNK: usize = 1024;
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let gz = file.read(&mut magic).map_err(|e| Error::io(path, e))? == 2 && magic == [0x1f, 0x8b];
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn BufRead> = if gz {
        Box::new(BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let pb = if let Some(label) = progress {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{msg} {pos} items ({per_sec})").expect("valid template"),
        );
        pb.set_message(label.to_string());
        pb
    } else {
        ProgressBar::hidden()
    };
    let bad = |line: usize, what: String| Error::format(path, format!("line {line}: {what}"));
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    let (mut fields, mut items) = (0, 0usize);
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(n, e.to_string()))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields == 0 {
            if parts.len() < 2 {
                return Err(bad(
                    n,
                    format!("need the values and a label, got {} field(s)", parts.len()),
                ));
            }
            fields = parts.len();
        } else if parts.len() != fields {
            return Err(bad(
                n,
                format!("{} fields, but the first line has {fields}", parts.len()),
            ));
        }
        let (label, values) = parts.split_last().expect("at least two fields");
        for (j, v) in values.iter().enumerate() {
            let field =
                |what: String| Error::format(path, format!("line {n}, field {}: {what}", j + 1));
            let value: f64 = v
                .parse()
                .map_err(|_| field(format!("{:?} is not a number", cut(v))))?;
            if !(0.0..=255.0).contains(&value) {
                return Err(field(format!("{value} is outside [0, 255]")));
            }
            rows.push(scale.apply(value));
        }
        labels.push(
            label
                .parse()
                .map_err(|_| bad(n, format!("label {:?} is not an integer", cut(label))))?,
        );
        items += 1;
        if labels.len() == ROWS_PER_CHUNK {
            sink(&rows, fields - 1, &labels)?;
            rows.clear();
            labels.clear();
            pb.set_position(items as u64);
        }
    }
    if items == 0 {
        return Err(Error::Dataset(format!("{} holds no items", path.display())));
    }
    if !labels.is_empty() {
        sink(&rows, fields - 1, &labels)?;
    }
    pb.finish_and_clear();
    Ok(fields - 1)
}

/// A field for an error message, cut to 40 characters.
fn cut(field: &str) -> String {
    field.chars().take(40).collect()
}

/// One decoded image: its shape (channels, height, width) and channel-major values 0–255.
type Decoded = (Vec<usize>, Vec<f32>);

fn decode_image(path: &Path) -> Result<Decoded> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: String| Error::format(path, format!("cannot decode image: {e}"));
    let (channels, h, w, interleaved) = match extension(path).as_str() {
        "png" => {
            let mut dec = png::Decoder::new(std::io::Cursor::new(&bytes));
            dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
            let mut reader = dec.read_info().map_err(|e| bad(e.to_string()))?;
            let size = reader
                .output_buffer_size()
                .ok_or_else(|| bad("image too large".into()))?;
            let mut buf = vec![0u8; size];
            let frame = reader
                .next_frame(&mut buf)
                .map_err(|e| bad(e.to_string()))?;
            buf.truncate(frame.buffer_size());
            let c = frame.color_type.samples();
            (c, frame.height as usize, frame.width as usize, buf)
        }
        _ => {
            use zune_jpeg::zune_core::colorspace::ColorSpace;
            use zune_jpeg::zune_core::options::DecoderOptions;
            let mut probe = zune_jpeg::JpegDecoder::new(std::io::Cursor::new(&bytes));
            probe.decode_headers().map_err(|e| bad(format!("{e:?}")))?;
            let grey = probe.input_colorspace() == Some(ColorSpace::Luma);
            let out = if grey {
                ColorSpace::Luma
            } else {
                ColorSpace::RGB
            };
            let options = DecoderOptions::default().jpeg_set_out_colorspace(out);
            let mut dec =
                zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(&bytes), options);
            let buf = dec.decode().map_err(|e| bad(format!("{e:?}")))?;
            let info = dec.info().ok_or_else(|| bad("no image header".into()))?;
            let c = if grey { 1 } else { 3 };
            (c, info.height as usize, info.width as usize, buf)
        }
    };
    if interleaved.len() != channels * h * w {
        return Err(bad(format!(
            "decoded {} bytes for a {w}x{h} image of {channels} channels",
            interleaved.len()
        )));
    }
    // Drop alpha: grey+alpha → grey, RGBA → RGB.
    let keep = if channels == 2 || channels == 4 {
        channels - 1
    } else {
        channels
    };
    let plane = h * w;
    let mut values = vec![0f32; keep * plane];
    for (p, px) in interleaved.chunks(channels).enumerate() {
        for ch in 0..keep {
            values[ch * plane + p] = f32::from(px[ch]);
        }
    }
    Ok((vec![keep, h, w], values))
}

fn from_images(
    dir: &Path,
    opts: &InputOptions,
    label: &str,
    sink: &mut Sink<'_>,
) -> Result<(Vec<usize>, String)> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let p = entry.path();
        if p.is_file() && matches!(extension(&p).as_str(), "png" | "jpg" | "jpeg") {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(Error::Dataset(format!(
            "{}: no PNG or JPEG images in this folder",
            dir.display()
        )));
    }
    files.sort();
    let scale = opts.scale.unwrap_or(Scale::PIXELS);
    let pb = bar(files.len() as u64, "images", label, opts.progress);
    let mut shape: Option<(Vec<usize>, &Path)> = None;
    for chunk in files.chunks(IMAGE_CHUNK) {
        let decoded: Vec<Result<Decoded>> = chunk.par_iter().map(|p| decode_image(p)).collect();
        let mut rows = Vec::new();
        for (p, d) in chunk.iter().zip(decoded) {
            let (s, values) = d?;
            match &shape {
                None => shape = Some((s, p)),
                Some((first, first_path)) if *first != s => {
                    return Err(Error::Dataset(format!(
                        "images differ in shape: {} is {} but {} is {}",
                        first_path.display(),
                        show_shape(first),
                        p.display(),
                        show_shape(&s)
                    )))
                }
                _ => {}
            }
            rows.extend(values.iter().map(|&v| scale.apply(f64::from(v))));
        }
        let dim = shape.as_ref().map_or(0, |(s, _)| s.iter().product());
        sink(&rows, dim)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok((shape.expect("at least one image").0, scale.value_space()))
}

fn show_shape(s: &[usize]) -> String {
    format!("{}x{} with {} channel(s)", s[2], s[1], s[0])
}
