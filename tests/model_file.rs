//! `Model::from_parts` validation and the safetensors model file (SPEC §2, §7): a round trip
//! keeps every part and all metadata; hand-built broken files (truncated, corrupt, wrong
//! shape or dtype, NaN, negative variance, non-orthonormal, missing tensor, wrong format
//! metadata) each give their own clear error; saving is atomic.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use gaussskip::model::{FILE_FORMAT, FILE_FORMAT_VERSION, ORTHONORMAL_TOL};
use gaussskip::rng::Rng;
use gaussskip::{Error, Model, ModelMeta};
use safetensors::tensor::{serialize, Dtype, SafeTensors, TensorView};

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// A fresh folder under the system temp folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("gaussskip-model-file-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// File names in the folder, sorted.
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const D: usize = 6;
const R: usize = 3;

/// Orthonormal rows by Gram–Schmidt on random normals, in f32.
fn eigvecs(seed: u64, r: usize, d: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut rows: Vec<Vec<f64>> = Vec::new();
    while rows.len() < r {
        let mut v = rng.normals(d);
        for _ in 0..2 {
            for u in &rows {
                let p: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(vi, ui)| *vi -= p * ui);
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        rows.push(v.iter().map(|x| x / n).collect());
    }
    rows.concat().iter().map(|&v| v as f32).collect()
}

fn meta() -> ModelMeta {
    ModelMeta {
        item_shape: vec![1, 2, 3],
        value_space: "[-1,1]".into(),
        sample_count: 12_345_678_901,
        source: "hand-made test model, ünïcode and \"quotes\"".into(),
        fit: None,
        calibrations: Default::default(),
    }
}

/// Valid parts: (mean, eigvals, eigvecs, residual_var).
fn parts() -> (Vec<f32>, Vec<f64>, Vec<f32>, f64) {
    let mean = vec![0.5, -1.25, 3.0e-7, 2.0, -0.0, 1.0 / 3.0];
    (mean, vec![4.5, 1.0 / 3.0, 0.0], eigvecs(1, R, D), 0.125)
}

fn valid_model() -> Model {
    let (m, l, u, rv) = parts();
    Model::from_parts(m, l, u, rv, meta()).unwrap()
}

/// One tensor of a hand-built file.
struct T {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn f32s(name: &'static str, shape: Vec<usize>, v: &[f32]) -> T {
    let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    T {
        name,
        dtype: Dtype::F32,
        shape,
        data,
    }
}

fn f64s(name: &'static str, shape: Vec<usize>, v: &[f64]) -> T {
    let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    T {
        name,
        dtype: Dtype::F64,
        shape,
        data,
    }
}

/// The tensors of a valid file, as `Model::save` writes them (SPEC §7).
fn good_tensors() -> Vec<T> {
    let (m, l, u, rv) = parts();
    vec![
        f32s("mean", vec![D], &m),
        f64s("eigvals", vec![R], &l),
        f32s("eigvecs", vec![R, D], &u),
        f64s("residual_var", vec![], &[rv]),
    ]
}

/// Safetensors file metadata.
type Meta = HashMap<String, String>;

fn good_meta() -> Meta {
    [
        ("format", FILE_FORMAT.to_string()),
        ("format_version", FILE_FORMAT_VERSION.to_string()),
        ("item_shape", "1,2,3".into()),
        ("value_space", "[-1,1]".into()),
        ("sample_count", "12345678901".into()),
        ("source", "hand-built".into()),
        ("components", r#"[{"count":12345678901,"label":""}]"#.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn bytes_of(tensors: &[T], meta: Option<Meta>) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name,
                TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    serialize(views, meta).unwrap()
}

/// Writes `bytes` to a file and loads it, expecting a `FileFormat` error naming that file;
/// returns the reason.
fn format_error(dir: &TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    match Model::load(&path) {
        Err(Error::FileFormat { path: p, reason }) => {
            assert_eq!(p, path, "the error names the file");
            reason
        }
        Err(other) => panic!("{name}: expected FileFormat, got {other:?}"),
        Ok(_) => panic!("{name}: a broken file loaded"),
    }
}

// ---------------------------------------------------------------------------------------------
// from_parts.

#[test]
fn from_parts_accepts_a_valid_model_and_keeps_its_parts() {
    let (m, l, u, rv) = parts();
    let model = Model::from_parts(m.clone(), l.clone(), u.clone(), rv, meta()).unwrap();
    assert_eq!((model.dim(), model.rank()), (D, R));
    assert_eq!(model.mean(), &m[..]);
    assert_eq!(model.eigvals(), &l[..]);
    assert_eq!(model.eigvecs(), &u[..]);
    assert_eq!(model.residual_var(), rv);
    assert_eq!(model.meta(), &meta());
    // Unknown item shape is allowed; full rank is allowed.
    let full = Model::from_parts(m, vec![2.0; D], eigvecs(2, D, D), 0.0, ModelMeta::default());
    assert_eq!(full.unwrap().rank(), D);
}

#[test]
fn from_parts_rejects_each_bad_part_with_its_own_error() {
    let (m, l, u, rv) = parts();
    let build = |m: Vec<f32>, l: Vec<f64>, u: Vec<f32>, rv: f64, meta: ModelMeta| {
        Model::from_parts(m, l, u, rv, meta).expect_err("invalid parts were accepted")
    };
    let shape = |e: Error, want: &str| match e {
        Error::ShapeMismatch { arg, .. } => assert_eq!(arg, want, "{e}"),
        other => panic!("expected ShapeMismatch for `{want}`, got {other:?}"),
    };
    let non_finite = |e: Error, want: &str, at: usize| match e {
        Error::NonFinite { arg, index } => assert_eq!((arg, index), (want, at)),
        other => panic!("expected NonFinite for `{want}`, got {other:?}"),
    };
    let invalid = |e: Error, want: &str| match e {
        Error::InvalidModel(msg) => assert!(msg.contains(want), "`{msg}` lacks `{want}`"),
        other => panic!("expected InvalidModel ({want}), got {other:?}"),
    };
    let md = ModelMeta::default;

    shape(build(vec![], vec![], vec![], 0.0, md()), "mean");
    shape(build(m.clone(), vec![], vec![], rv, md()), "eigvals");
    shape(
        build(m.clone(), vec![1.0; D + 1], eigvecs(3, D, D), rv, md()),
        "eigvals",
    );
    shape(
        build(m.clone(), l.clone(), u[..u.len() - 1].to_vec(), rv, md()),
        "eigvecs",
    );

    let mut bad = m.clone();
    bad[2] = f32::NAN;
    non_finite(build(bad, l.clone(), u.clone(), rv, md()), "mean", 2);
    let mut bad = l.clone();
    bad[0] = f64::INFINITY;
    non_finite(build(m.clone(), bad, u.clone(), rv, md()), "eigvals", 0);
    let mut bad = u.clone();
    bad[D + 4] = f32::NAN;
    non_finite(build(m.clone(), l.clone(), bad, rv, md()), "eigvecs", D + 4);
    non_finite(
        build(m.clone(), l.clone(), u.clone(), f64::NAN, md()),
        "residual_var",
        0,
    );

    invalid(
        build(m.clone(), vec![4.0, -0.5, -1.0], u.clone(), rv, md()),
        "eigvals[1] = -0.5 is negative",
    );
    invalid(
        build(m.clone(), vec![1.0, 2.0, 0.5], u.clone(), rv, md()),
        "non-increasing",
    );
    invalid(
        build(m.clone(), l.clone(), u.clone(), -0.25, md()),
        "residual_var = -0.25 is negative",
    );
    let wrong_shape = ModelMeta {
        item_shape: vec![2, 2],
        ..meta()
    };
    invalid(
        build(m.clone(), l.clone(), u.clone(), rv, wrong_shape),
        "item shape [2, 2]",
    );

    let mut long = u.clone();
    long[D..2 * D].iter_mut().for_each(|v| *v *= 1.01);
    invalid(
        build(m.clone(), l.clone(), long, rv, md()),
        "eigenvector 1 has norm",
    );
    let zero_row = {
        let mut z = u.clone();
        z[..D].iter_mut().for_each(|v| *v = 0.0);
        z
    };
    invalid(
        build(m.clone(), l.clone(), zero_row, rv, md()),
        "eigenvector 0 has norm",
    );
    // Rows 0 and 2 equal: unit norm, but not orthogonal.
    let mut twin = u.clone();
    let row0 = twin[..D].to_vec();
    twin[2 * D..].copy_from_slice(&row0);
    invalid(
        build(m, l, twin, rv, md()),
        "eigenvectors 0 and 2 are not orthogonal",
    );
}

/// Row 0 tilted towards row 1 by `eps` and renormalised: unit norm, dot product with row 1
/// of about `eps`.
fn tilted(eps: f64) -> Vec<f32> {
    let mut u = eigvecs(4, R, D);
    let mix: Vec<f64> = (0..D)
        .map(|j| u[j] as f64 + eps * u[D + j] as f64)
        .collect();
    let n = mix.iter().map(|x| x * x).sum::<f64>().sqrt();
    u[..D]
        .iter_mut()
        .zip(&mix)
        .for_each(|(v, x)| *v = (x / n) as f32);
    u
}

#[test]
fn orthonormality_tolerance_is_the_documented_one() {
    let (m, l, _, rv) = parts();
    let ok = Model::from_parts(
        m.clone(),
        l.clone(),
        tilted(ORTHONORMAL_TOL / 2.0),
        rv,
        meta(),
    );
    assert!(ok.is_ok(), "half the tolerance must pass: {ok:?}");
    match Model::from_parts(m, l, tilted(2.0 * ORTHONORMAL_TOL), rv, meta()) {
        Err(Error::InvalidModel(msg)) => {
            assert!(msg.contains("0 and 1 are not orthogonal"), "{msg}")
        }
        other => panic!("twice the tolerance must fail, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Round trip and file layout.

#[test]
fn save_then_load_keeps_every_part_and_all_metadata() {
    let dir = TempDir::new("roundtrip");
    for (name, model) in [
        ("with-meta.safetensors", valid_model()),
        ("no-meta.safetensors", {
            let (m, l, u, rv) = parts();
            Model::from_parts(m, l, u, rv, ModelMeta::default()).unwrap()
        }),
        ("full-rank.safetensors", {
            let (m, _, _, _) = parts();
            let l = vec![9.0, 1e-3, 1e-3, 7e-9, 0.0, 0.0];
            Model::from_parts(m, l, eigvecs(5, D, D), 0.0, meta()).unwrap()
        }),
    ] {
        let path = dir.join(name);
        model.save(&path).unwrap();
        let back = Model::load(&path).unwrap();
        let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let bits64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits32(back.mean()), bits32(model.mean()), "{name}: mean");
        assert_eq!(
            bits64(back.eigvals()),
            bits64(model.eigvals()),
            "{name}: eigvals"
        );
        assert_eq!(
            bits32(back.eigvecs()),
            bits32(model.eigvecs()),
            "{name}: eigvecs"
        );
        assert_eq!(
            back.residual_var().to_bits(),
            model.residual_var().to_bits(),
            "{name}"
        );
        assert_eq!(back.meta(), model.meta(), "{name}: metadata");
        assert_ne!(back.id(), model.id(), "a loaded model is a new model");
    }
    assert_eq!(
        dir.names(),
        [
            "full-rank.safetensors",
            "no-meta.safetensors",
            "with-meta.safetensors"
        ],
        "no temporary files left behind"
    );
}

#[test]
fn saved_file_has_the_spec_layout() {
    let dir = TempDir::new("layout");
    let path = dir.join("m.safetensors");
    valid_model().save(&path).unwrap();
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let expect = [
        ("mean", Dtype::F32, vec![D]),
        ("eigvals", Dtype::F64, vec![R]),
        ("eigvecs", Dtype::F32, vec![R, D]),
        ("residual_var", Dtype::F64, vec![]),
    ];
    let mut names: Vec<&str> = st.names();
    names.sort();
    assert_eq!(names, ["eigvals", "eigvecs", "mean", "residual_var"]);
    for (name, dtype, shape) in expect {
        let t = st.tensor(name).unwrap();
        assert_eq!((t.dtype(), t.shape().to_vec()), (dtype, shape), "{name}");
    }
    // Row k of `eigvecs` is u_k, contiguous.
    let t = st.tensor("eigvecs").unwrap();
    let row1: Vec<f32> = t.data()[4 * D..8 * D]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(row1, valid_model().eigvecs()[D..2 * D]);
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let stored = header.metadata().clone().unwrap();
    assert_eq!(stored, {
        let mut m = good_meta();
        m.insert("source".into(), meta().source);
        m
    });
}

#[test]
fn hand_built_files_load_including_f64_tensors() {
    let dir = TempDir::new("handbuilt");
    let model = {
        let path = dir.join("good.safetensors");
        fs::write(&path, bytes_of(&good_tensors(), Some(good_meta()))).unwrap();
        Model::load(&path).unwrap()
    };
    assert_eq!(model.meta().source, "hand-built");
    assert_eq!(model.meta().sample_count, 12_345_678_901);
    // NumPy-style files store everything in f64: accepted, mean and eigvecs narrowed to f32.
    let (m, l, u, rv) = parts();
    let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let all64 = [
        f64s("mean", vec![D], &widen(&m)),
        f64s("eigvals", vec![R], &l),
        f64s("eigvecs", vec![R, D], &widen(&u)),
        f64s("residual_var", vec![], &[rv]),
    ];
    let path = dir.join("f64.safetensors");
    fs::write(&path, bytes_of(&all64, Some(good_meta()))).unwrap();
    let m64 = Model::load(&path).unwrap();
    assert_eq!(m64.mean(), model.mean());
    assert_eq!(m64.eigvecs(), model.eigvecs());
    // Metadata beyond format, version and (from version 2) the components is optional.
    let mut minimal: Meta = good_meta()
        .into_iter()
        .filter(|(k, _)| k.starts_with("format"))
        .collect();
    minimal.insert("components".into(), r#"[{"label":"","count":0}]"#.into());
    let path = dir.join("minimal.safetensors");
    fs::write(&path, bytes_of(&good_tensors(), Some(minimal.clone()))).unwrap();
    assert_eq!(Model::load(&path).unwrap().meta(), &ModelMeta::default());
    minimal.remove("components");
    minimal.insert("format_version".into(), "1".into());
    fs::write(&path, bytes_of(&good_tensors(), Some(minimal))).unwrap();
    assert_eq!(Model::load(&path).unwrap().meta(), &ModelMeta::default());
}

// ---------------------------------------------------------------------------------------------
// Broken files.

#[test]
fn missing_file_is_an_io_error() {
    let dir = TempDir::new("missing");
    let path = dir.join("nothing-here.safetensors");
    match Model::load(&path) {
        Err(Error::Io { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn truncated_and_corrupt_files_are_reported() {
    let dir = TempDir::new("corrupt");
    let good = bytes_of(&good_tensors(), Some(good_meta()));
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut extra = good.clone();
    extra.extend_from_slice(b"trailing junk");
    let with_header = |h: &[u8]| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h);
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "header too small"),
        ("four bytes", good[..4].to_vec(), "header too small"),
        (
            "cut in the header",
            good[..8 + header_len / 2].to_vec(),
            "invalid header length",
        ),
        (
            "cut in the data",
            good[..good.len() - 5].to_vec(),
            "incomplete metadata",
        ),
        (
            "one byte short",
            good[..good.len() - 1].to_vec(),
            "incomplete metadata",
        ),
        ("trailing bytes", extra, "incomplete metadata"),
        (
            "garbage header",
            with_header(b"this is not JSON at all"),
            "invalid JSON in header",
        ),
        (
            "unclosed JSON",
            with_header(br#"{"mean": {"dtype": "F32", "#),
            "invalid JSON in header",
        ),
        (
            "not UTF-8",
            with_header(&[0x7b, 0xff, 0xfe, 0x7d]),
            "invalid UTF-8 in header",
        ),
        (
            "huge header length",
            u64::MAX.to_le_bytes().to_vec(),
            "header too large",
        ),
        // A valid header that promises 24 bytes of data with none behind it.
        (
            "offsets past the data",
            with_header(br#"{"mean":{"dtype":"F32","shape":[6],"data_offsets":[0,24]}}"#),
            "incomplete metadata",
        ),
    ];
    for (name, bytes, want) in cases {
        let reason = format_error(&dir, &format!("{name}.safetensors"), &bytes);
        // A size that disagrees with the header is named as truncation; the rest as corruption.
        let size_problem = [
            "header too small",
            "invalid header length",
            "incomplete metadata",
        ];
        let lead = if size_problem.contains(&want) {
            "truncated or padded"
        } else {
            "not a valid safetensors file"
        };
        assert!(reason.contains(lead), "{name}: {reason}");
        assert!(reason.contains(want), "{name}: `{reason}` lacks `{want}`");
    }
}

#[test]
fn wrong_content_gives_its_own_error() {
    let dir = TempDir::new("content");
    let (m, l, u, rv) = parts();
    let with = |name: &'static str, t: T| -> Vec<T> {
        let mut v: Vec<T> = good_tensors()
            .into_iter()
            .filter(|x| x.name != name)
            .collect();
        v.push(t);
        v
    };
    let without = |name: &str| -> Vec<T> {
        good_tensors()
            .into_iter()
            .filter(|x| x.name != name)
            .collect()
    };
    let meta_with = |k: &str, v: Option<&str>| {
        let mut mm = good_meta();
        match v {
            Some(v) => mm.insert(k.to_string(), v.to_string()),
            None => mm.remove(k),
        };
        Some(mm)
    };
    let mut nan_mean = m.clone();
    nan_mean[3] = f32::NAN;
    let mut ortho = u.clone();
    let row0 = ortho[..D].to_vec();
    ortho[D..2 * D].copy_from_slice(&row0);
    let u_wide: Vec<f32> = (0..R * (D + 1))
        .map(|i| if i % (D + 2) == 0 { 1.0 } else { 0.0 })
        .collect();
    let cases: Vec<(&str, Vec<T>, Option<Meta>, &str)> = vec![
        (
            "eigvecs wrong shape",
            with("eigvecs", f32s("eigvecs", vec![R, D + 1], &u_wide)),
            Some(good_meta()),
            "tensor `eigvecs` has shape [3, 7], expected [3, 6]",
        ),
        (
            "eigvecs one-dimensional",
            with("eigvecs", f32s("eigvecs", vec![R * D], &u)),
            Some(good_meta()),
            "tensor `eigvecs` has shape [18], expected 2 dimension(s)",
        ),
        (
            "mean two-dimensional",
            with("mean", f32s("mean", vec![2, 3], &m)),
            Some(good_meta()),
            "tensor `mean` has shape [2, 3], expected 1 dimension(s)",
        ),
        (
            "residual_var a vector",
            with("residual_var", f64s("residual_var", vec![1], &[rv])),
            Some(good_meta()),
            "tensor `residual_var` has shape [1], expected 0 dimension(s)",
        ),
        (
            "eigvals as i64",
            with(
                "eigvals",
                T {
                    name: "eigvals",
                    dtype: Dtype::I64,
                    shape: vec![R],
                    data: [4i64, 1, 0].iter().flat_map(|x| x.to_le_bytes()).collect(),
                },
            ),
            Some(good_meta()),
            "tensor `eigvals` has dtype I64, expected F32 or F64",
        ),
        (
            "mean as f16",
            with(
                "mean",
                T {
                    name: "mean",
                    dtype: Dtype::F16,
                    shape: vec![D],
                    data: m
                        .iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                },
            ),
            Some(good_meta()),
            "tensor `mean` has dtype F16",
        ),
        (
            "NaN in the mean",
            with("mean", f32s("mean", vec![D], &nan_mean)),
            Some(good_meta()),
            "`mean` holds a non-finite value (NaN or Inf) at index 3",
        ),
        (
            "negative eigenvalue",
            with("eigvals", f64s("eigvals", vec![R], &[l[0], l[1], -0.75])),
            Some(good_meta()),
            "eigvals[2] = -0.75 is negative",
        ),
        (
            "negative residual",
            with("residual_var", f64s("residual_var", vec![], &[-1.0])),
            Some(good_meta()),
            "residual_var = -1 is negative",
        ),
        (
            "non-orthonormal eigenvectors",
            with("eigvecs", f32s("eigvecs", vec![R, D], &ortho)),
            Some(good_meta()),
            "eigenvectors 0 and 1 are not orthogonal",
        ),
        (
            "eigvecs missing",
            without("eigvecs"),
            Some(good_meta()),
            "tensor `eigvecs` is missing",
        ),
        (
            "residual_var missing",
            without("residual_var"),
            Some(good_meta()),
            "tensor `residual_var` is missing",
        ),
        (
            "wrong format name",
            good_tensors(),
            meta_with("format", Some("pytorch")),
            "metadata format is \"pytorch\", expected \"gaussskip\"",
        ),
        (
            "format missing",
            good_tensors(),
            meta_with("format", None),
            "metadata key `format` is missing",
        ),
        (
            "no metadata at all",
            good_tensors(),
            None,
            "metadata key `format` is missing",
        ),
        (
            "future version",
            good_tensors(),
            meta_with("format_version", Some("3")),
            "format_version \"3\" is not supported",
        ),
        (
            "version missing",
            good_tensors(),
            meta_with("format_version", None),
            "format_version \"\" is not supported",
        ),
        (
            "item_shape not a list",
            good_tensors(),
            meta_with("item_shape", Some("3,x,2")),
            "metadata item_shape: \"3,x,2\" is not a comma-separated list",
        ),
        (
            "item_shape of another size",
            good_tensors(),
            meta_with("item_shape", Some("4,4")),
            "item shape [4, 4] does not have 6 elements",
        ),
        (
            "sample_count negative",
            good_tensors(),
            meta_with("sample_count", Some("-5")),
            "metadata sample_count \"-5\" is not a whole number",
        ),
    ];
    let mut reasons: Vec<String> = Vec::new();
    for (name, tensors, meta, want) in cases {
        let reason = format_error(
            &dir,
            &format!("{name}.safetensors"),
            &bytes_of(&tensors, meta),
        );
        assert!(reason.contains(want), "{name}: `{reason}` lacks `{want}`");
        reasons.push(reason);
    }
    // Every distinct fault reads differently (the two spellings of a missing `format` key
    // aside, which are the same fault).
    let mut unique = reasons.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), reasons.len() - 1, "{reasons:#?}");
}

// ---------------------------------------------------------------------------------------------
// Atomic saving.

fn temp_leftovers(dir: &TempDir) -> Vec<String> {
    dir.names()
        .into_iter()
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn save_replaces_an_existing_file_whole() {
    let dir = TempDir::new("replace");
    let path = dir.join("model.safetensors");
    let old = valid_model();
    old.save(&path).unwrap();
    let (m, _, _, _) = parts();
    let new =
        Model::from_parts(m, vec![1.0; D], eigvecs(6, D, D), 0.0, ModelMeta::default()).unwrap();
    new.save(&path).unwrap();
    let back = Model::load(&path).unwrap();
    assert_eq!(back.rank(), D);
    assert_eq!(back.eigvecs(), new.eigvecs());
    assert_eq!(back.meta(), &ModelMeta::default());
    assert_eq!(dir.names(), ["model.safetensors"]);
}

#[test]
fn save_under_a_regular_file_fails_cleanly() {
    let dir = TempDir::new("parent-is-file");
    let parent = dir.join("not-a-folder");
    fs::write(&parent, b"keep me").unwrap();
    let path = parent.join("model.safetensors");
    match valid_model().save(&path) {
        Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(fs::read(&parent).unwrap(), b"keep me");
    assert_eq!(dir.names(), ["not-a-folder"]);
}

#[test]
fn failed_rename_leaves_the_target_and_no_temporary_file() {
    // The temporary file is written, then the rename onto a non-empty folder fails (for any
    // user, root included): the folder must survive untouched and the temporary file go.
    let dir = TempDir::new("rename-fails");
    let target = dir.join("model.safetensors");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("inside"), b"old content").unwrap();
    match valid_model().save(&target) {
        Err(Error::Io { path: p, .. }) => assert_eq!(p, target),
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(fs::read(target.join("inside")).unwrap(), b"old content");
    assert_eq!(dir.names(), ["model.safetensors"]);
    assert!(temp_leftovers(&dir).is_empty());
}

#[test]
fn failed_save_into_a_read_only_folder_keeps_the_old_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("read-only");
    let path = dir.join("model.safetensors");
    valid_model().save(&path).unwrap();
    let old = fs::read(&path).unwrap();
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o555)).unwrap();
    // Root (or CAP_DAC_OVERRIDE) writes anyway: then there is no failure to observe, and the
    // root-proof case above (a failing rename) covers the clean-up.
    let probe = dir.join("probe");
    let enforced = fs::write(&probe, b"x").is_err();
    let _ = fs::remove_file(&probe);
    let (m, l, u, rv) = parts();
    let other = Model::from_parts(m, l, u, 2.0 * rv, ModelMeta::default()).unwrap();
    let result = other.save(&path);
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    if !enforced {
        eprintln!("permissions are not enforced for this user (root?): nothing to check here");
        return;
    }
    match result {
        Err(Error::Io { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), old, "the old file was changed");
    assert_eq!(dir.names(), ["model.safetensors"]);
}

#[test]
fn paths_without_a_folder_and_without_a_name() {
    match valid_model().save(Path::new("/")) {
        Err(Error::InvalidArgument {
            arg: "path",
            reason,
        }) => assert!(reason.contains("no file name"), "{reason}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}
