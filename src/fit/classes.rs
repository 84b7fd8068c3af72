//! Fitting by label: one streaming accumulator per class, one component per class.
//!
//! Labels come from the last column of a CSV (the bundled digits' layout), from the names of
//! a folder's class subfolders (the ImageNet layout), or from an integer array of one label
//! per item: an array of the same `.npz` / `.safetensors` file, or a separate `.npy` file.
//! A class with fewer than [`MIN_CLASS_ITEMS`] items is an error naming it: its covariance
//! cannot be estimated (no shrinkage is applied silently).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::input::{csv_item_shape, flat_array, is_csv, read_csv, stream, InputOptions, Scale};
use super::{fit_model, FitOptions, Moments};
use crate::error::{Error, Result};
use crate::model::{Model, ModelMeta, MAX_COMPONENTS};

/// Fewest items a class may have.
pub const MIN_CLASS_ITEMS: u64 = 2;

/// Where the labels of a dataset are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelSource {
    /// The CSV's last column, or the class subfolders of an image folder.
    Auto,
    /// The integer array of this name in the same `.npz` / `.safetensors` file.
    Key(String),
    /// A separate `.npy` file of one integer label per item.
    File(PathBuf),
}

impl LabelSource {
    /// `None`/empty → [`LabelSource::Auto`]; a path ending in `.npy` → a file; anything else
    /// names an array of the input file.
    pub fn parse(text: Option<&str>) -> LabelSource {
        match text.map(str::trim) {
            None | Some("") | Some("auto") => LabelSource::Auto,
            Some(t) if t.to_ascii_lowercase().ends_with(".npy") => LabelSource::File(t.into()),
            Some(t) => LabelSource::Key(t.to_string()),
        }
    }
}

/// A dataset streamed into one accumulator per class.
#[derive(Clone, Debug)]
pub struct LoadedClasses {
    /// The moments of each class, by label (sorted as numbers when every label is one).
    pub classes: Vec<(String, Moments)>,
    /// Shape of one item.
    pub item_shape: Vec<usize>,
    /// The value space the items were mapped to.
    pub value_space: String,
}

/// Streams the dataset at `path` into one [`Moments`] per class.
///
/// # Errors
/// As `moments_from_path`, plus `Dataset` for a dataset without labels where `Auto` needs
/// them, a label array whose length differs from the number of items or whose values are not
/// whole numbers, more than [`MAX_COMPONENTS`] classes.
pub fn classes_from_path(
    path: &Path,
    opts: &InputOptions,
    labels: &LabelSource,
) -> Result<LoadedClasses> {
    let mut classes: BTreeMap<String, Moments> = BTreeMap::new();
    let mut add = |label: String, row: &[f64]| -> Result<()> {
        if !classes.contains_key(&label) && classes.len() >= MAX_COMPONENTS {
            return Err(Error::Dataset(format!(
                "more than {MAX_COMPONENTS} classes: is the label column right?"
            )));
        }
        classes
            .entry(label)
            .or_insert_with(|| Moments::new(row.len()))
            .add_rows_f64(row)
    };
    let (item_shape, value_space) = match labels {
        LabelSource::Auto if is_csv(path) => {
            let scale = opts.scale.unwrap_or(Scale::PIXELS);
            let show = opts.progress.then_some("reading");
            let dim = read_csv(path, scale, show, &mut |rows, dim, labels| {
                rows.chunks_exact(dim)
                    .zip(labels)
                    .try_for_each(|(row, l)| add(l.to_string(), row))
            })?;
            (csv_item_shape(dim), scale.value_space())
        }
        LabelSource::Auto if path.is_dir() => {
            let dirs = class_folders(path)?;
            let mut first: Option<(Vec<usize>, String)> = None;
            for (name, dir) in dirs {
                let got = stream(&dir, opts, &name, &mut |rows, dim| {
                    rows.chunks_exact(dim).try_for_each(|r| add(name.clone(), r))
                })?;
                match &first {
                    Some(f) if f.0 != got.0 => {
                        return Err(Error::Dataset(format!(
                            "class folders hold images of different shapes: {} has {:?}, the first class {:?}",
                            dir.display(),
                            got.0,
                            f.0
                        )))
                    }
                    Some(_) => {}
                    None => first = Some(got),
                }
            }
            first.expect("class_folders returns at least one folder")
        }
        LabelSource::Auto => {
            return Err(Error::Dataset(format!(
                "{}: no labels: a CSV carries them in its last column and an image folder in its class subfolders; for arrays name the label array (--labels KEY) or a .npy file of labels",
                path.display()
            )))
        }
        LabelSource::Key(_) | LabelSource::File(_) => {
            let values = label_values(path, opts, labels)?;
            let mut next = 0usize;
            let got = stream(path, opts, "reading", &mut |rows, dim| {
                for row in rows.chunks_exact(dim) {
                    let l = values.get(next).ok_or_else(|| too_few(values.len()))?;
                    add(l.clone(), row)?;
                    next += 1;
                }
                Ok(())
            })?;
            if next != values.len() {
                return Err(Error::Dataset(format!(
                    "the labels hold {} values for {next} items",
                    values.len()
                )));
            }
            got
        }
    };
    let mut classes: Vec<(String, Moments)> = classes.into_iter().collect();
    if classes.iter().all(|(l, _)| l.parse::<i64>().is_ok()) {
        classes.sort_by_key(|(l, _)| l.parse::<i64>().unwrap_or(0));
    }
    Ok(LoadedClasses {
        classes,
        item_shape,
        value_space,
    })
}

fn too_few(n: usize) -> Error {
    Error::Dataset(format!("the labels hold {n} values, fewer than the items"))
}

/// The class subfolders of `dir`, sorted by name.
fn class_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            dirs.push((name.unwrap_or_default(), p));
        }
    }
    if dirs.is_empty() {
        return Err(Error::Dataset(format!(
            "{}: no class subfolders (one folder of images per class is the labelled layout)",
            dir.display()
        )));
    }
    dirs.sort();
    Ok(dirs)
}

/// The labels of a `Key` or `File` source as text, one per item.
fn label_values(path: &Path, opts: &InputOptions, labels: &LabelSource) -> Result<Vec<String>> {
    let (values, from) = match labels {
        LabelSource::Key(k) => {
            if opts.key.is_none() {
                return Err(Error::Dataset(format!(
                    "{}: with a label array in the same file, name the data array too (--key)",
                    path.display()
                )));
            }
            (flat_array(path, Some(k))?, path)
        }
        LabelSource::File(f) => (flat_array(f, None)?, f.as_path()),
        LabelSource::Auto => unreachable!("handled by the caller"),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                Ok(format!("{}", v as i64))
            } else {
                Err(Error::Dataset(format!(
                    "{}: label {i} is {v}, not a whole number",
                    from.display()
                )))
            }
        })
        .collect()
}

/// Fits one component per class (each as `fit_model` with `opts`) and joins them, labelled.
///
/// # Errors
/// As [`fit_class_moments`].
pub fn fit_classes(loaded: &LoadedClasses, opts: &FitOptions) -> Result<Model> {
    let classes: Vec<(&str, &Moments)> = loaded
        .classes
        .iter()
        .map(|(l, m)| (l.as_str(), m))
        .collect();
    fit_class_moments(&classes, opts)
}

/// Fits one component per `(label, moments)` and joins them in that order.
///
/// # Errors
/// `Dataset` naming a class with fewer than [`MIN_CLASS_ITEMS`] items; `InvalidArgument` for
/// no classes or labels that are not distinct; the errors of `fit_model`, naming the class.
pub fn fit_class_moments(classes: &[(&str, &Moments)], opts: &FitOptions) -> Result<Model> {
    if classes.is_empty() {
        return Err(Error::arg("classes", "needs at least one class"));
    }
    if let Some((label, m)) = classes.iter().find(|(_, m)| m.count() < MIN_CLASS_ITEMS) {
        return Err(Error::Dataset(format!(
            "class {label:?} has {} item(s); every class needs at least {MIN_CLASS_ITEMS} to estimate its covariance (drop or merge it)",
            m.count()
        )));
    }
    let mut parts = Vec::with_capacity(classes.len());
    for (label, moments) in classes {
        let model = fit_model(moments, opts).map_err(|e| match e {
            Error::InvalidArgument { arg, reason } => Error::InvalidArgument {
                arg,
                reason: format!("class {label:?}: {reason}"),
            },
            e => e,
        })?;
        parts.push(model.with_label(*label));
    }
    let meta = ModelMeta {
        sample_count: 0,
        ..parts[0].meta().clone()
    };
    Model::from_components(parts, meta)
}
