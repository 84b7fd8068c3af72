//! The command-line tool, run as a separate process: `skip` against the f64 reference for
//! every schedule, `info` against numbers computed by hand, and every failure path (one error
//! line, non-zero exit, nothing written).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gaussskip::reference::{rel_error, Gaussian};
use gaussskip::rng::Rng;
use gaussskip::{npy, Model, ModelMeta, Noise};

const EIGVALS: [f64; 7] = [9.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.1];
const RESIDUAL_VAR: f64 = 0.25;
const ITEM_SHAPE: [usize; 3] = [2, 3, 5];
const DIM: usize = 30;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gaussskip-cli-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A rank-7 model of dimension 30 with a non-zero mean and residual variance, saved in `dir`.
fn model_file(dir: &Path) -> (PathBuf, Model) {
    let mut rng = Rng::new(11);
    let mean: Vec<f32> = (0..DIM).map(|_| rng.normal() as f32).collect();
    // Gram-Schmidt on random vectors in f64 gives orthonormal rows.
    let mut rows: Vec<Vec<f64>> = Vec::new();
    while rows.len() < EIGVALS.len() {
        let mut v: Vec<f64> = (0..DIM).map(|_| rng.normal()).collect();
        for u in &rows {
            let p: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(x, a)| *x -= p * a);
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        rows.push(v.iter().map(|x| x / n).collect());
    }
    let eigvecs: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    let meta = ModelMeta {
        item_shape: ITEM_SHAPE.to_vec(),
        value_space: "[-1,1]".into(),
        sample_count: 1234,
        source: "cli test".into(),
        fit: None,
        calibrations: Default::default(),
    };
    let model = Model::from_parts(mean, EIGVALS.to_vec(), eigvecs, RESIDUAL_VAR, meta).unwrap();
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    (path, model)
}

fn gaussskip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gaussskip"))
        .args(args)
        .output()
        .expect("the gaussskip binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A little-endian f64 .npy written byte by byte (the library only writes f32).
fn write_f64_npy(path: &Path, shape: &[usize], data: &[f64]) {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let dict = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({}{}), }}\n",
        dims.join(", "),
        if shape.len() == 1 { "," } else { "" }
    );
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    data.iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    fs::write(path, bytes).unwrap();
}

/// Runs `skip` on `x` (stored as f64 when `as_f64`) and checks the f32 output against the
/// reference map row by row.
#[allow(clippy::too_many_arguments)]
fn check_skip(
    dir: &Path,
    model_path: &Path,
    model: &Model,
    shape: &[usize],
    x: &[f64],
    as_f64: bool,
    schedule: &str,
    (from_arg, from): (&str, Noise),
    (to_arg, to): (&str, Noise),
) {
    let input = dir.join(format!("in-{schedule}-{from_arg}-{to_arg}.npy"));
    let output = dir.join(format!("out-{schedule}-{from_arg}-{to_arg}.npy"));
    if as_f64 {
        write_f64_npy(&input, shape, x);
    } else {
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        npy::write_f32(&input, shape, &xf).unwrap();
    }
    let run = gaussskip(&[
        "skip",
        "--model",
        path_str(model_path),
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
        "--from",
        from_arg,
        "--to",
        to_arg,
        "--schedule",
        schedule,
        "--device",
        "cpu",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).starts_with("wrote "), "{}", stdout(&run));
    let (got_shape, got) = npy::read_f32(&output).unwrap();
    assert_eq!(got_shape, shape);
    let g = Gaussian::from_model(model);
    // The reference sees exactly what the tool read: the input rounded to f32.
    let xr: Vec<f64> = x.iter().map(|&v| v as f32 as f64).collect();
    let want: Vec<f64> = xr
        .chunks_exact(DIM)
        .flat_map(|row| g.skip(row, from, to))
        .collect();
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    let err = rel_error(&got, &want);
    println!("{schedule} {from_arg} -> {to_arg}: relative error {err:.2e}");
    assert!(
        err <= 1e-5,
        "{schedule} {from_arg} -> {to_arg}: relative error {err:e}"
    );
    // The map moved the samples: a copy of the input would not pass.
    assert!(rel_error(&xr, &want) > 1e-2, "{schedule}: trivial case");
}

fn noise_rows(batch: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..batch * DIM).map(|_| scale * rng.normal()).collect()
}

#[test]
fn skip_edm_matches_the_reference_for_flat_and_item_shapes() {
    let dir = temp_dir("edm");
    let (model_path, model) = model_file(&dir);
    let x = noise_rows(5, 80.0, 1);
    let item = [5, ITEM_SHAPE[0], ITEM_SHAPE[1], ITEM_SHAPE[2]];
    let edm = |s: &'static str| (s, Noise::edm(s.parse().unwrap()));
    check_skip(
        &dir,
        &model_path,
        &model,
        &item,
        &x,
        false,
        "edm",
        edm("80"),
        edm("10"),
    );
    check_skip(
        &dir,
        &model_path,
        &model,
        &[5, DIM],
        &x,
        true,
        "edm",
        edm("80"),
        edm("0.5"),
    );
    // Down to sigma = 0 (the Gaussian's sample) and one item without a batch axis.
    check_skip(
        &dir,
        &model_path,
        &model,
        &[DIM],
        &x[..DIM],
        false,
        "edm",
        edm("80"),
        edm("0"),
    );
    // Backwards (inversion) is the same map.
    let y = noise_rows(3, 2.0, 2);
    check_skip(
        &dir,
        &model_path,
        &model,
        &[3, DIM],
        &y,
        false,
        "edm",
        edm("0.7"),
        edm("40"),
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn skip_vp_and_flow_schedules() {
    let dir = temp_dir("vpflow");
    let (model_path, model) = model_file(&dir);
    // VP at alpha_bar 0.01 has sigma near 1: unit-scale noise plus a little signal.
    let x = noise_rows(4, 1.0, 3);
    let vp = |s: &'static str| (s, Noise::vp(s.parse().unwrap()));
    let flow = |s: &'static str| (s, Noise::flow(s.parse().unwrap()));
    let item = [4, ITEM_SHAPE[0], ITEM_SHAPE[1], ITEM_SHAPE[2]];
    check_skip(
        &dir,
        &model_path,
        &model,
        &item,
        &x,
        false,
        "vp",
        vp("0.01"),
        vp("0.7"),
    );
    check_skip(
        &dir,
        &model_path,
        &model,
        &[4, DIM],
        &x,
        true,
        "vp",
        vp("0"),
        vp("1"),
    );
    // Flow from t = 1 is pure noise (alpha = 0).
    check_skip(
        &dir,
        &model_path,
        &model,
        &item,
        &x,
        true,
        "flow",
        flow("1"),
        flow("0.3"),
    );
    check_skip(
        &dir,
        &model_path,
        &model,
        &[4, DIM],
        &x,
        false,
        "flow",
        flow("0.9"),
        flow("0"),
    );
    let _ = fs::remove_dir_all(&dir);
}

/// The value on the line of the text report that starts with `label`.
fn field<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no line `{label}` in\n{report}"))
        .trim()
}

#[test]
fn info_reports_the_model() {
    let dir = temp_dir("info");
    let (model_path, _) = model_file(&dir);
    let run = gaussskip(&["info", path_str(&model_path)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = stdout(&run);
    assert_eq!(field(&text, "dimension"), "30");
    assert_eq!(field(&text, "rank"), "7 of 30 (truncated)");
    assert_eq!(field(&text, "item shape"), "2x3x5");
    assert_eq!(field(&text, "value space"), "[-1,1]");
    assert_eq!(field(&text, "sample count"), "1234");
    assert_eq!(field(&text, "source"), "cli test");
    assert!(
        field(&text, "residual variance").starts_with("0.25 "),
        "{text}"
    );
    assert_eq!(field(&text, "largest eigenvalue"), "9");
    assert_eq!(field(&text, "smallest eigenvalue"), "0.1");
    // 20.6 in the modes plus 23 directions at 0.25.
    assert_eq!(field(&text, "total variance"), "26.35");
    assert_eq!(field(&text, "top 1 mode"), "34.16% of the variance");
    assert_eq!(field(&text, "50% of variance"), "2 modes");
    assert_eq!(
        field(&text, "99% of variance"),
        "not reached by the 7 modes"
    );
    // Quantile rows: mode, eigenvalue, sigma = sqrt(eigenvalue).
    let row = |q: &str| -> Vec<String> {
        // Two spaces after the quantile tell these rows from "50% of variance".
        field(&text, &format!("{q}  "))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(row("0%"), ["1", "9", "3"]);
    assert_eq!(row("50%"), ["4", "2", "1.41421"]);
    assert_eq!(row("100%"), ["7", "0.1", "0.316228"]);

    let run = gaussskip(&["info", "--json", path_str(&model_path)]);
    assert!(run.status.success(), "{}", stderr(&run));
    let j: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(j["dim"], 30);
    assert_eq!(j["rank"], 7);
    assert_eq!(j["residual_var"], 0.25);
    assert_eq!(j["item_shape"], serde_json::json!([2, 3, 5]));
    let total = j["total_variance"].as_f64().unwrap();
    assert!((total - 26.35).abs() < 1e-12, "{total}");
    let modes_for = &j["modes_for_fraction"];
    // Cumulative 9, 14, 17, 19, 20, 20.5, 20.6 of 26.35: 90% needs 23.715, out of reach.
    assert_eq!(modes_for[0]["modes"], 2);
    assert_eq!(modes_for[1]["modes"], serde_json::Value::Null);
    let half = &j["half_commitment"];
    for (i, (mode, lambda)) in [(1, 9.0), (2, 5.0), (4, 2.0), (6, 0.5), (7, 0.1)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(half[i]["mode"], mode);
        let sigma = half[i]["edm_sigma"].as_f64().unwrap();
        assert!((sigma - f64::sqrt(lambda)).abs() < 1e-12);
        // At that sigma the mode holds half its final x0 power.
        let rho = Noise::edm(sigma).commitment(lambda);
        assert!((rho * rho - 0.5).abs() < 1e-12);
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A failed run: non-zero exit, one line on stderr with the tool's prefix, no output file.
fn assert_fails(args: &[&str], output: Option<&Path>, want: &str) {
    let run = gaussskip(args);
    let err = stderr(&run);
    assert!(!run.status.success(), "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("gaussskip: error:"), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: expected `{want}` in {err}");
    if let Some(out) = output {
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[test]
fn errors_are_one_line_and_write_nothing() {
    let dir = temp_dir("errors");
    let (model_path, _) = model_file(&dir);
    let m = path_str(&model_path).to_string();
    let good = dir.join("good.npy");
    npy::write_f32(&good, &[2, DIM], &vec![1.0; 2 * DIM]).unwrap();
    let out = dir.join("out.npy");
    let o = path_str(&out).to_string();
    let skip = |input: &Path, from: &str, to: &str, extra: &[&str], want: &str| {
        let mut args = vec![
            "skip",
            "--model",
            &m,
            "--input",
            path_str(input),
            "--output",
            &o,
            "--from",
            from,
            "--to",
            to,
        ];
        args.extend_from_slice(extra);
        assert_fails(&args, Some(&out), want);
    };

    let missing = dir.join("missing.npy");
    skip(&missing, "80", "10", &[], "missing.npy");
    let wrong_dim = dir.join("wrong_dim.npy");
    npy::write_f32(&wrong_dim, &[2, DIM - 1], &vec![1.0; 2 * (DIM - 1)]).unwrap();
    skip(
        &wrong_dim,
        "80",
        "10",
        &[],
        "[batch, 30] or [batch, 2, 3, 5]",
    );
    let wrong_item = dir.join("wrong_item.npy");
    npy::write_f32(&wrong_item, &[2, 5, 3, 2], &vec![1.0; 2 * DIM]).unwrap();
    skip(&wrong_item, "80", "10", &[], "[2, 5, 3, 2]");
    let empty = dir.join("empty.npy");
    npy::write_f32(&empty, &[0, DIM], &[]).unwrap();
    skip(&empty, "80", "10", &[], "holds no samples");
    skip(&good, "-1", "10", &[], "got -1");
    skip(&good, "80", "-0.5", &[], "got -0.5");
    skip(&good, "0", "10", &[], "a skip must start from sigma > 0");
    skip(&good, "nan", "10", &[], "finite");
    skip(
        &good,
        "0.5",
        "1.5",
        &["--schedule", "vp"],
        "alpha_bar must be in [0, 1]",
    );
    skip(
        &good,
        "1",
        "0",
        &["--schedule", "vp"],
        "a skip must start from sigma > 0",
    );
    skip(
        &good,
        "1.2",
        "0",
        &["--schedule", "flow"],
        "t must be in [0, 1]",
    );

    // Corrupt inputs: cut data, garbage, non-numeric dtype.
    let bytes = fs::read(&good).unwrap();
    let cut = dir.join("cut.npy");
    fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    skip(
        &cut,
        "80",
        "10",
        &[],
        "expected 240 bytes of data, found 237",
    );
    let junk = dir.join("junk.npy");
    fs::write(&junk, b"this is not an array").unwrap();
    skip(&junk, "80", "10", &[], "bad magic");
    let strings = dir.join("strings.npy");
    let mut s = bytes.clone();
    let at = s.windows(4).position(|w| w == b"'<f4").unwrap();
    s[at + 1..at + 4].copy_from_slice(b"<U1");
    fs::write(&strings, s).unwrap();
    skip(&strings, "80", "10", &[], "unicode strings");
    let mut nan = vec![1.0f32; 2 * DIM];
    nan[DIM + 4] = f32::NAN;
    let nan_path = dir.join("nan.npy");
    npy::write_f32(&nan_path, &[2, DIM], &nan).unwrap();
    skip(&nan_path, "80", "10", &[], "sample 1 holds NaN or Inf");

    // A model file that is not one, and a missing one.
    let not_model = dir.join("not_model.safetensors");
    fs::write(&not_model, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap();
    let nm = path_str(&not_model).to_string();
    let g = path_str(&good).to_string();
    let base = [
        "skip", "--input", &g, "--output", &o, "--from", "80", "--to", "1",
    ];
    for (model, want) in [
        (nm.as_str(), "not_model.safetensors"),
        ("/nonexistent/m.safetensors", "m.safetensors"),
    ] {
        let args = [&base[..], &["--model", model][..]].concat();
        assert_fails(&args, Some(&out), want);
    }
    assert_fails(&["info", &nm], None, "not_model.safetensors");
    assert_fails(
        &["info", "/nonexistent/m.safetensors"],
        None,
        "m.safetensors",
    );

    // A failed run leaves an existing output as it was.
    fs::write(&out, b"keep me").unwrap();
    let run = gaussskip(&[
        "skip",
        "--model",
        &m,
        "--input",
        path_str(&cut),
        "--output",
        &o,
        "--from",
        "80",
        "--to",
        "10",
    ]);
    assert!(!run.status.success());
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let _ = fs::remove_dir_all(&dir);
}

/// A version-2 .npy whose header is `dict` (padded by nothing), with `data` after it.
fn raw_npy_v2(path: &Path, dict: &str, data: &[u8]) {
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend_from_slice(&((dict.len() + 1) as u32).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(data);
    fs::write(path, bytes).unwrap();
}

#[test]
fn argument_errors_are_one_line_with_status_one() {
    for args in [
        &["skip", "--bogus"][..],
        &["skip"][..],
        &["info"][..],
        &["fit", "x.npy", "--rank", "many"][..],
        &["no-such-command"][..],
    ] {
        let run = gaussskip(args);
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("gaussskip: error: "), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
    // Asking for help or the version is not an error.
    let run = gaussskip(&["skip", "--help"]);
    assert_eq!(run.status.code(), Some(0));
    assert!(stdout(&run).contains("Usage"), "{}", stdout(&run));
    assert_eq!(gaussskip(&["--version"]).status.code(), Some(0));
}

#[test]
fn hostile_levels_and_headers_are_refused_in_one_short_line() {
    let dir = temp_dir("hostile");
    // Residual variance 0, as in the papers: the gain off the modes is sigma_to / sigma_from.
    let (_, base) = model_file(&dir);
    let model_path = dir.join("zero_residual.safetensors");
    Model::from_parts(
        base.mean().to_vec(),
        base.eigvals().to_vec(),
        base.eigvecs().to_vec(),
        0.0,
        base.meta().clone(),
    )
    .unwrap()
    .save(&model_path)
    .unwrap();
    let m = path_str(&model_path).to_string();
    let good = dir.join("good.npy");
    npy::write_f32(&good, &[2, DIM], &vec![1.0; 2 * DIM]).unwrap();
    let out = dir.join("out.npy");
    let o = path_str(&out).to_string();
    let skip = |input: &Path, from: &str, to: &str| {
        vec![
            "skip".to_string(),
            "--model".into(),
            m.clone(),
            "--input".into(),
            path_str(input).into(),
            "--output".into(),
            o.clone(),
            "--from".into(),
            from.into(),
            "--to".into(),
            to.into(),
            "--device".into(),
            "cpu".into(),
        ]
    };
    let fails = |args: Vec<String>, want: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails(&args, Some(&out), want);
        let err = stderr(&gaussskip(&args));
        assert!(err.len() < 600, "{} bytes: {err}", err.len());
        assert_eq!(gaussskip(&args).status.code(), Some(1));
    };
    // Gains beyond f32 used to write NaN/Inf and exit 0.
    fails(skip(&good, "1e-200", "10"), "beyond the f32 range");
    let eighty = dir.join("eighty.npy");
    npy::write_f32(&eighty, &[2, DIM], &vec![80.0; 2 * DIM]).unwrap();
    fails(skip(&eighty, "80", "1e39"), "overflow f32");
    fails(skip(&good, "1", "1e39"), "beyond the f32 range");
    // An output that overflows f32 for these values, though every gain is representable.
    let big = dir.join("big.npy");
    npy::write_f32(&big, &[2, DIM], &vec![3e36; 2 * DIM]).unwrap();
    fails(skip(&big, "1", "1000"), "overflow f32");
    // 30,000 nested brackets used to overflow the stack (exit 134).
    let deep = dir.join("deep.npy");
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}{}, }}",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    raw_npy_v2(&deep, &dict, &[0u8; 8]);
    fails(skip(&deep, "80", "10"), "nested more than 16 deep");
    // A 1 MB header is quoted in part only.
    let long = dir.join("long.npy");
    let dict = format!("{{'descr': '<f4', 'junk': '{}', }}", "x".repeat(1_000_000));
    raw_npy_v2(&long, &dict, &[]);
    fails(skip(&long, "80", "10"), "characters)");

    // Tiny levels print compactly, not as 200-digit decimals.
    let args = skip(&good, "80", "1e-200");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = gaussskip(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).contains("sigma 80 to 1e-200 (EDM)"),
        "{}",
        stdout(&run)
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn fit_reads_csv_and_reports_only_after_writing() {
    let dir = temp_dir("csv");
    let csv = dir.join("items.csv");
    let mut rng = Rng::new(5);
    let mut text = String::new();
    for i in 0..40 {
        let row: Vec<String> = (0..9)
            .map(|_| ((rng.normal() * 40.0 + 120.0).clamp(0.0, 255.0) as u32).to_string())
            .collect();
        text.push_str(&format!("{},{}\n", row.join(","), i % 3));
    }
    fs::write(&csv, text).unwrap();
    let model = dir.join("m.safetensors");
    let run = gaussskip(&[
        "fit",
        path_str(&csv),
        "-o",
        path_str(&model),
        "--no-progress",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stderr(&run), "", "a successful fit prints only its report");
    assert!(
        stdout(&run).starts_with("wrote ") && stdout(&run).contains("40 items of shape [1, 3, 3]"),
        "{}",
        stdout(&run)
    );
    let fitted = Model::load(&model).unwrap();
    assert_eq!(
        (fitted.dim(), fitted.meta().item_shape.clone()),
        (9, vec![1, 3, 3])
    );
    assert_eq!(fitted.meta().value_space, "[-1,1]");
    assert!(fitted.mean().iter().all(|v| (-1.0..=1.0).contains(v)));

    // A rank the data cannot have: the error is the only line, nothing is written.
    let bad = dir.join("bad.safetensors");
    assert_fails(
        &[
            "fit",
            path_str(&csv),
            "-o",
            path_str(&bad),
            "--rank",
            "100",
            "--no-progress",
        ],
        Some(&bad),
        "rank",
    );
    let run = gaussskip(&["fit", path_str(&csv), "-o", path_str(&bad), "--rank", "100"]);
    assert_eq!(stdout(&run), "");

    // The bundled digits, as `demo --data` reads them.
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist_5k.csv.gz");
    let run = gaussskip(&[
        "fit",
        path_str(&bundled),
        "-o",
        path_str(&model),
        "--rank",
        "32",
        "--no-progress",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).contains("5000 items of shape [1, 28, 28]"),
        "{}",
        stdout(&run)
    );
    let _ = fs::remove_dir_all(&dir);
}
