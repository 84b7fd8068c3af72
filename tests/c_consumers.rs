//! C and C++ consumers of the C ABI, built and run against the shared library of this build.
//!
//! The test writes a fixture (a model file, inputs, noise levels and the f64 reference outputs
//! of [`gaussskip::reference::Gaussian`], all raw little-endian) into the cargo target's tmp
//! folder, compiles tests/c/consumer.c (`-std=c11`), tests/cpp/consumer.cpp through
//! bindings/cpp/gaussskip.hpp (`-std=c++17`, and `-std=c++20` for the std::span overloads) and
//! tests/c/hostile.c (hostile calls: sizes, levels, files, threads) and
//! examples/c/skip_example.c with `-Wall -Wextra -Wpedantic -Werror`, links them against
//! libgaussskip.so and runs them. The programs do the checking; see their header comments.
//!
//! The library: `cargo test` builds the cdylib next to the test binaries (target/<profile>/
//! deps/libgaussskip.so, compiled in the same rustc call as the rlib these tests link), but
//! does not copy it up to target/<profile>/. That fresh copy is the one used.
//!
//! CUDA: the programs are told whether this machine has an NVIDIA device (/dev/nvidia0 or an
//! entry in /proc/driver/nvidia/gpus). Without one, GS_DEVICE_CUDA must give GS_ERR_NO_CUDA;
//! with one, GS_OK or GS_ERR_NO_CUDA are accepted (a CPU-only build, an old driver).
//!
//! Needs gcc and g++ (or `CC`/`CXX`) and readelf on PATH.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use gaussskip::reference::Gaussian;
use gaussskip::rng::Rng;
use gaussskip::{Levels, Model, ModelMeta, Noise, Op};

const DIM: usize = 37;
const RANK: usize = 11;
const BATCH: usize = 5;
const STRICT: [&str; 4] = ["-Wall", "-Wextra", "-Wpedantic", "-Werror"];

struct Fixture {
    root: PathBuf,
    data: PathBuf,
    lib_dir: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_consumers");
        if root.exists() {
            fs::remove_dir_all(&root).expect("clear the previous run's folder");
        }
        let data = root.join("data");
        let lib_dir = root.join("lib");
        fs::create_dir_all(&data).expect("create the fixture folder");
        fs::create_dir_all(&lib_dir).expect("create the library folder");
        link_library(&lib_dir);
        write_fixture(&data);
        Fixture {
            root,
            data,
            lib_dir,
        }
    })
}

/// A private folder holding the library under its link name and, once it has one, its
/// SONAME, which is what the loader looks for at run time.
fn link_library(lib_dir: &Path) {
    let lib = common::built_library();
    let mut names = vec!["libgaussskip.so".to_string()];
    names.extend(soname(&lib));
    for name in names {
        std::os::unix::fs::symlink(&lib, lib_dir.join(&name))
            .unwrap_or_else(|e| panic!("symlink {name} -> {}: {e}", lib.display()));
    }
}

fn soname(lib: &Path) -> Option<String> {
    let out = run_tool(Command::new("readelf").arg("-d").arg(lib), "readelf");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("(SONAME)"))
        .and_then(|l| Some(l[l.find('[')? + 1..l.rfind(']')?].to_string()))
}

fn run_tool(cmd: &mut Command, name: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}); it is needed by this test"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn orthonormal_rows(rng: &mut Rng, rows: usize, dim: usize) -> Vec<Vec<f64>> {
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(rows);
    while basis.len() < rows {
        let mut v = rng.normals(dim);
        // Two passes of modified Gram-Schmidt: orthogonal to f64 rounding.
        for _ in 0..2 {
            for u in &basis {
                let p: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(vi, ui)| *vi -= p * ui);
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        v.iter_mut().for_each(|vi| *vi /= norm);
        basis.push(v);
    }
    basis
}

fn write_le<const N: usize>(path: &Path, bytes: impl Iterator<Item = [u8; N]>) {
    let data: Vec<u8> = bytes.flatten().collect();
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn write_f64(path: &Path, v: &[f64]) {
    write_le(path, v.iter().map(|x| x.to_le_bytes()));
}

fn write_levels(path: &Path, levels: &[Noise]) {
    let flat: Vec<f64> = levels.iter().flat_map(|n| [n.alpha, n.sigma]).collect();
    write_f64(path, &flat);
}

/// Model, inputs, levels and reference outputs; the layout is described in tests/c/consumer.c.
fn write_fixture(dir: &Path) {
    let mut rng = Rng::new(0xC0AB1);
    // Odd sizes, a spectrum down to an exact zero, and variance off the subspace.
    let mut eigvals: Vec<f64> = (0..RANK).map(|k| 9.0 * 0.6f64.powi(k as i32)).collect();
    eigvals[RANK - 1] = 0.0;
    let residual_var = 0.37;
    let mean: Vec<f32> = rng.normals(DIM).iter().map(|&v| (0.5 * v) as f32).collect();
    let eigvecs: Vec<f32> = orthonormal_rows(&mut rng, RANK, DIM)
        .iter()
        .flatten()
        .map(|&v| v as f32)
        .collect();
    let model = Model::from_parts(mean, eigvals, eigvecs, residual_var, ModelMeta::default())
        .expect("fixture model is valid");
    model
        .save(dir.join("model.safetensors"))
        .expect("save fixture model");

    // Every parameterisation, sigma = 0 targets, and one row that skips towards more noise.
    let from = Noise::vp(0.04);
    let to = Noise::flow(0.3);
    let at = Noise::edm(1.7);
    let from_rows = [
        Noise::edm(80.0),
        Noise::vp(0.01),
        Noise::flow(0.95),
        Noise::new(0.5, 2.0),
        Noise::edm(0.4),
    ];
    let to_rows = [
        Noise::edm(0.0),
        Noise::vp(0.8),
        Noise::flow(0.1),
        Noise::new(2.0, 0.5),
        Noise::edm(3.0),
    ];
    let at_rows = [
        Noise::edm(0.0),
        Noise::vp(0.5),
        Noise::flow(0.6),
        Noise::new(1.3, 0.2),
        Noise::edm(25.0),
    ];
    let levels = [Noise::edm(10.0), Noise::vp(0.6), Noise::flow(0.0)];

    // Each row drawn at the scale of its own per-row source level.
    let mut x = Vec::with_capacity(BATCH * DIM);
    for level in &from_rows {
        let scale = (2.0 * level.alpha * level.alpha + level.sigma * level.sigma).sqrt();
        for (m, z) in model.mean().iter().zip(rng.normals(DIM)) {
            x.push((level.alpha * *m as f64 + scale * z) as f32);
        }
    }
    let mut all_levels = vec![from, to, at];
    all_levels.extend(
        from_rows
            .iter()
            .chain(&to_rows)
            .chain(&at_rows)
            .chain(&levels),
    );
    write_levels(&dir.join("levels.f64"), &all_levels);
    fs::write(
        dir.join("meta.txt"),
        format!("{DIM} {RANK} {BATCH} {}\n", levels.len()),
    )
    .expect("write meta.txt");
    write_le(&dir.join("x.f32"), x.iter().map(|v| v.to_le_bytes()));
    write_le(
        &dir.join("x.f16"),
        x.iter()
            .map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()),
    );
    write_le(
        &dir.join("x.bf16"),
        x.iter()
            .map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()),
    );

    let gauss = Gaussian::from_model(&model);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let ops: [(&str, Op<'_>); 6] = [
        (
            "skip",
            Op::Skip {
                from: from.into(),
                to: to.into(),
            },
        ),
        ("denoise", Op::Denoise { at: at.into() }),
        (
            "skip_rows",
            Op::Skip {
                from: Levels::PerRow(&from_rows),
                to: Levels::PerRow(&to_rows),
            },
        ),
        (
            "denoise_rows",
            Op::Denoise {
                at: Levels::PerRow(&at_rows),
            },
        ),
        (
            "skip_trajectory",
            Op::SkipTrajectory {
                from: from.into(),
                levels: &levels,
            },
        ),
        (
            "x0_trajectory",
            Op::X0Trajectory {
                from: from.into(),
                levels: &levels,
            },
        ),
    ];
    for (name, op) in ops {
        let reference = gauss
            .apply(op, &x64, BATCH)
            .unwrap_or_else(|e| panic!("reference {name}: {e}"));
        assert!(
            reference.iter().all(|v| v.is_finite()) && reference.iter().any(|&v| v != 0.0),
            "reference {name} must be finite and not all zero"
        );
        write_f64(&dir.join(format!("ref_{name}.f64")), &reference);
    }
    write_hostile_fixture(dir, &gauss, &mut rng);
}

/// The extra files of tests/c/hostile.c: an inversion (sigma 1e-4 -> 10) of rows drawn from
/// the model at sigma 1e-4 with its reference, and three model files with hostile headers.
fn write_hostile_fixture(dir: &Path, gauss: &Gaussian, rng: &mut Rng) {
    let (from, to) = (Noise::edm(1e-4), Noise::edm(10.0));
    let mut x = Vec::with_capacity(BATCH * DIM);
    for _ in 0..BATCH {
        let z = rng.normals(DIM);
        let e = rng.normals(DIM);
        let mut row = gauss.mean.clone();
        for (k, u) in gauss.eigvecs.iter().enumerate() {
            let c = gauss.eigvals[k].sqrt() * z[k];
            row.iter_mut().zip(u).for_each(|(v, &ui)| *v += c * ui);
        }
        // Off the modes: variance residual_var per direction (z's part outside span(U)).
        let mut rest = z.clone();
        for u in &gauss.eigvecs {
            let p: f64 = u.iter().zip(&z).map(|(a, b)| a * b).sum();
            rest.iter_mut().zip(u).for_each(|(v, &ui)| *v -= p * ui);
        }
        let s = gauss.residual_var.sqrt();
        for i in 0..DIM {
            x.push((row[i] + s * rest[i] + from.sigma * e[i]) as f32);
        }
    }
    write_le(&dir.join("x_invert.f32"), x.iter().map(|v| v.to_le_bytes()));
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let op = Op::Skip {
        from: from.into(),
        to: to.into(),
    };
    write_f64(
        &dir.join("ref_invert.f64"),
        &gauss.apply(op, &x64, BATCH).expect("reference inversion"),
    );

    let good = fs::read(dir.join("model.safetensors")).expect("fixture model");
    // A tensor entry twice (the same content: a last-wins parser would not notice).
    write_with_header(&dir.join("dup_tensor.safetensors"), &good, |h| {
        let v: serde_json::Value = serde_json::from_str(h).unwrap();
        format!("{{\"mean\":{},{}", v["mean"], &h[1..])
    });
    // A metadata key twice, the second saying something else.
    write_with_header(&dir.join("dup_meta.safetensors"), &good, |h| {
        h.replacen(
            "\"format\":\"gaussskip\"",
            "\"format\":\"gaussskip\",\"format\":\"other\"",
            1,
        )
    });
    // A small model whose item shape's product wraps around to its dimension: 4 x (2^62 + 1).
    let small = Model::from_parts(
        vec![0.0; 4],
        vec![1.0],
        vec![1.0, 0.0, 0.0, 0.0],
        0.0,
        ModelMeta {
            item_shape: vec![4],
            ..ModelMeta::default()
        },
    )
    .expect("small model");
    let path = dir.join("wrapped_shape.safetensors");
    small.save(&path).expect("save small model");
    let bytes = fs::read(&path).expect("read small model");
    write_with_header(&path, &bytes, |h| {
        h.replacen(
            "\"item_shape\":\"4\"",
            "\"item_shape\":\"4,4611686018427387905\"",
            1,
        )
    });
}

/// Rewrites the JSON header of a safetensors image with `edit` and writes the file.
fn write_with_header(path: &Path, bytes: &[u8], edit: impl Fn(&str) -> String) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).expect("UTF-8 header");
    let new = edit(header.trim_end());
    assert_ne!(
        new,
        header.trim_end(),
        "{}: the edit changed nothing",
        path.display()
    );
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn cuda_device_present() -> bool {
    Path::new("/dev/nvidia0").exists()
        || fs::read_dir("/proc/driver/nvidia/gpus").is_ok_and(|mut d| d.next().is_some())
}

fn compiler(var: &str, default: &str) -> String {
    let cc = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let found = Command::new(&cc).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "C/C++ compiler `{cc}` not found: install gcc and g++ (or set {var})"
    );
    cc
}

/// Compiles and links one program against the library; returns its path.
fn build(cc: &str, std: &str, source: &str, name: &str, extra: &[&str]) -> PathBuf {
    let fx = fixture();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = fx.root.join(name);
    let out = Command::new(cc)
        .arg(std)
        .args(STRICT)
        .arg("-O1")
        .arg("-I")
        .arg(manifest.join("include"))
        .arg("-I")
        .arg(manifest.join("bindings/cpp"))
        .arg(manifest.join(source))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&fx.lib_dir)
        .arg("-lgaussskip")
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("run {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cc} {std} {source} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(exe: &Path, args: &[&str]) -> Output {
    let fx = fixture();
    let mut path = fx.lib_dir.clone().into_os_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let out = Command::new(exe)
        .args(args)
        .env("LD_LIBRARY_PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    out
}

fn assert_passed(exe: &Path, out: &Output) {
    use std::os::unix::process::ExitStatusExt;
    // The programs put buffers right before an inaccessible page: a crash there is the
    // library reading or writing past the sizes it was given.
    let hint = match out.status.signal() {
        Some(11) => " (SIGSEGV: out-of-bounds access, possibly past a guarded buffer)",
        _ => "",
    };
    assert!(
        out.status.success(),
        "{} failed ({}{hint}):\n--- stdout\n{}--- stderr\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn consumer_args() -> [String; 3] {
    let cuda = if cuda_device_present() {
        "present"
    } else {
        "absent"
    };
    [
        fixture().data.display().to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
        cuda.to_string(),
    ]
}

#[test]
fn c_program_matches_reference_and_rejects_bad_calls() {
    let cc = compiler("CC", "gcc");
    let exe = build(
        &cc,
        "-std=c11",
        "tests/c/consumer.c",
        "consumer_c",
        &["-lm", "-pthread"],
    );
    let args = consumer_args();
    let out = run(&exe, &args.each_ref().map(String::as_str));
    assert_passed(&exe, &out);
}

#[test]
fn c_program_survives_hostile_calls() {
    let cc = compiler("CC", "gcc");
    let exe = build(
        &cc,
        "-std=c11",
        "tests/c/hostile.c",
        "hostile_c",
        &["-lm", "-pthread"],
    );
    let data = fixture().data.display().to_string();
    let out = run(&exe, &[&data]);
    assert_passed(&exe, &out);
}

#[test]
fn cpp17_wrapper_matches_reference_and_throws_statuses() {
    let cxx = compiler("CXX", "g++");
    let exe = build(
        &cxx,
        "-std=c++17",
        "tests/cpp/consumer.cpp",
        "consumer_cpp17",
        &["-pthread"],
    );
    let args = consumer_args();
    let out = run(&exe, &args.each_ref().map(String::as_str));
    assert_passed(&exe, &out);
}

#[test]
fn cpp20_wrapper_span_overloads() {
    let cxx = compiler("CXX", "g++");
    let exe = build(
        &cxx,
        "-std=c++20",
        "tests/cpp/consumer.cpp",
        "consumer_cpp20",
        &["-pthread"],
    );
    let args = consumer_args();
    let out = run(&exe, &args.each_ref().map(String::as_str));
    assert_passed(&exe, &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(span)"),
        "the C++20 build did not exercise the std::span overloads"
    );
}

#[test]
fn c_example_builds_and_runs() {
    let cc = compiler("CC", "gcc");
    let exe = build(
        &cc,
        "-std=c11",
        "examples/c/skip_example.c",
        "skip_example",
        &[],
    );
    let model = fixture().data.join("model.safetensors");
    let out = run(&exe, &[model.to_str().expect("UTF-8 path")]);
    assert_passed(&exe, &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("skipped 4 rows of dim {DIM} from sigma 80 to 2.5")),
        "unexpected example output: {text}"
    );
    // A failure is reported with the status text and the library's detail, exit code 1.
    let missing = fixture().data.join("missing.safetensors");
    let out = run(&exe, &[missing.to_str().expect("UTF-8 path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.starts_with("gs_model_load: ") && err.contains("missing.safetensors"),
        "unexpected example error report: {err}"
    );
}
