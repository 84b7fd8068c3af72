//! Fitting by label: a CSV's label column, class subfolders of images, a label array beside
//! the data (.npz key or .npy file) each give one component per class, equal to the fit of
//! that class's items alone; classes too small to fit are refused by name; the CLI writes
//! and `info` lists the components.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use gaussskip::fit::{
    classes_from_path, fit_classes, fit_model, FitOptions, InputOptions, LabelSource, Moments,
    Rank, Residual, Scale,
};
use gaussskip::rng::Rng;
use gaussskip::{Error, Model, ModelMeta};

fn temp_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("gaussskip-classes-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    p
}

const D: usize = 4;

/// `n` items per class of `classes`, pixel values 0..=255, each class around its own level.
fn items(classes: &[(i64, usize)], seed: u64) -> Vec<(i64, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for &(label, n) in classes {
        for _ in 0..n {
            let base = 40.0 + 30.0 * label as f64;
            let row = (0..D)
                .map(|j| {
                    (base + 10.0 * j as f64 + 12.0 * rng.normal())
                        .clamp(0.0, 255.0)
                        .round() as u8
                })
                .collect();
            out.push((label, row));
        }
    }
    // Interleave the classes, as a real file would.
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by_key(|&i| (i * 7919) % out.len());
    order.into_iter().map(|i| out[i].clone()).collect()
}

fn write_csv(path: &Path, rows: &[(i64, Vec<u8>)]) {
    let mut f = fs::File::create(path).unwrap();
    for (label, row) in rows {
        let vals: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        writeln!(f, "{},{label}", vals.join(",")).unwrap();
    }
}

fn opts() -> FitOptions {
    FitOptions {
        rank: Rank::Full,
        residual: Residual::Zero,
        meta: ModelMeta {
            item_shape: vec![D],
            ..ModelMeta::default()
        },
    }
}

/// The model of one class fitted alone from the same scaled rows.
fn alone(rows: &[(i64, Vec<u8>)], label: i64) -> Model {
    let mut m = Moments::new(D);
    let scale = Scale::PIXELS;
    let data: Vec<f64> = rows
        .iter()
        .filter(|(l, _)| *l == label)
        .flat_map(|(_, r)| r.iter().map(|&v| scale.apply(v as f64)).collect::<Vec<_>>())
        .collect();
    m.add_rows_f64(&data).unwrap();
    fit_model(&m, &opts()).unwrap()
}

fn input() -> InputOptions {
    InputOptions {
        scale: None,
        key: None,
        progress: false,
    }
}

fn assert_components_match(model: &Model, rows: &[(i64, Vec<u8>)], labels: &[i64]) {
    assert_eq!(model.n_components(), labels.len());
    for (k, &label) in labels.iter().enumerate() {
        let c = model.component(k).unwrap();
        let a = alone(rows, label);
        assert_eq!(c.label(), label.to_string());
        assert_eq!(
            c.count(),
            rows.iter().filter(|(l, _)| *l == label).count() as u64
        );
        for (x, y) in c.mean().iter().zip(a.mean()) {
            assert!((x - y).abs() <= 1e-6, "class {label} mean");
        }
        for (x, y) in c.eigvals().iter().zip(a.eigvals()) {
            assert!(
                (x - y).abs() <= 1e-9 * a.eigvals()[0],
                "class {label} eigvals"
            );
        }
    }
}

#[test]
fn csv_label_column_gives_one_component_per_class() {
    let dir = temp_dir("csv");
    let rows = items(&[(2, 9), (0, 7), (10, 6)], 1);
    let path = dir.join("d.csv");
    write_csv(&path, &rows);
    let loaded = classes_from_path(&path, &input(), &LabelSource::Auto).unwrap();
    let model = fit_classes(&loaded, &opts()).unwrap();
    // Numeric labels sort as numbers.
    assert_eq!(model.labels(), ["0", "2", "10"]);
    assert_eq!(model.meta().sample_count, 22);
    assert_components_match(&model, &rows, &[0, 2, 10]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn class_subfolders_give_one_component_per_folder() {
    let dir = temp_dir("folders");
    let rows = items(&[(0, 5), (1, 6)], 2);
    for (i, (label, row)) in rows.iter().enumerate() {
        let class = dir.join(if *label == 0 { "cat" } else { "dog" });
        fs::create_dir_all(&class).unwrap();
        let file = fs::File::create(class.join(format!("{i}.png"))).unwrap();
        let mut enc = png::Encoder::new(file, 2, 2);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(row).unwrap();
    }
    let loaded = classes_from_path(&dir, &input(), &LabelSource::Auto).unwrap();
    assert_eq!(loaded.item_shape, [1, 2, 2]);
    let model = fit_classes(&loaded, &opts()).unwrap();
    assert_eq!(model.labels(), ["cat", "dog"]);
    assert_eq!(model.counts(), [5, 6]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_label_file_beside_an_array() {
    let dir = temp_dir("npy");
    let rows = items(&[(3, 6), (1, 5)], 3);
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|(_, r)| r.iter().map(|&v| v as f32))
        .collect();
    let labels: Vec<f32> = rows.iter().map(|(l, _)| *l as f32).collect();
    gaussskip::npy::write_f32(&dir.join("x.npy"), &[rows.len(), D], &data).unwrap();
    gaussskip::npy::write_f32(&dir.join("y.npy"), &[rows.len()], &labels).unwrap();
    let opts_in = InputOptions {
        scale: Some(Scale::PIXELS),
        ..input()
    };
    let loaded = classes_from_path(
        &dir.join("x.npy"),
        &opts_in,
        &LabelSource::parse(Some(dir.join("y.npy").to_str().unwrap())),
    )
    .unwrap();
    let model = fit_classes(&loaded, &opts()).unwrap();
    assert_components_match(&model, &rows, &[1, 3]);
    // Labels that do not match the items are refused.
    gaussskip::npy::write_f32(&dir.join("short.npy"), &[3], &labels[..3]).unwrap();
    let e = classes_from_path(
        &dir.join("x.npy"),
        &opts_in,
        &LabelSource::File(dir.join("short.npy")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("fewer than the items"), "{e}");
    let mut frac = labels.clone();
    frac[4] = 0.5;
    gaussskip::npy::write_f32(&dir.join("frac.npy"), &[rows.len()], &frac).unwrap();
    let e = classes_from_path(
        &dir.join("x.npy"),
        &opts_in,
        &LabelSource::File(dir.join("frac.npy")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("label 4 is 0.5"), "{e}");
    // An unlabelled array with the automatic source says where labels can come from.
    let e = classes_from_path(&dir.join("x.npy"), &opts_in, &LabelSource::Auto).unwrap_err();
    assert!(
        matches!(e, Error::Dataset(_)) && e.to_string().contains("no labels"),
        "{e}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_class_too_small_to_fit_is_named() {
    let dir = temp_dir("small");
    let rows = items(&[(0, 5), (7, 1)], 4);
    let path = dir.join("d.csv");
    write_csv(&path, &rows);
    let loaded = classes_from_path(&path, &input(), &LabelSource::Auto).unwrap();
    let e = fit_classes(&loaded, &opts()).unwrap_err();
    assert!(e.to_string().contains("class \"7\" has 1 item"), "{e}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cli_fits_by_label_and_info_lists_the_components() {
    let dir = temp_dir("cli");
    let rows = items(&[(0, 6), (1, 6), (2, 6)], 5);
    let path = dir.join("d.csv");
    write_csv(&path, &rows);
    let out = dir.join("m.safetensors");
    let exe = env!("CARGO_BIN_EXE_gaussskip");
    let run = Command::new(exe)
        .args([
            "fit",
            path.to_str().unwrap(),
            "--labels",
            "-o",
            out.to_str().unwrap(),
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("in 3 classes (0, 1, 2)"));
    let model = Model::load(&out).unwrap();
    assert_components_match(&model, &rows, &[0, 1, 2]);
    let info = Command::new(exe)
        .args(["info", out.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("components            3"), "{text}");
    assert!(text.contains("6 items, rank 4"), "{text}");
    let bad = Command::new(exe)
        .args([
            "fit",
            path.to_str().unwrap(),
            "--labels",
            "--method",
            "sketch",
            "--rank",
            "2",
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("exact fit"));
    fs::remove_dir_all(&dir).unwrap();
}
