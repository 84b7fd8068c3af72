//! Fitting: streaming moments against two-pass f64 sums, shard merging, the eigen
//! decomposition and truncation options, and every input format with its errors.

use std::fs;
use std::path::{Path, PathBuf};

use gaussskip::fit::{
    fit_model, fit_model_with_spectrum, moments_from_path, FitOptions, InputOptions, Moments, Rank,
    Residual, Scale,
};
use gaussskip::rng::Rng;
use gaussskip::{Error, Model};

/// A fresh empty folder under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gaussskip-fit-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two-pass f64 mean and unbiased covariance of row-major `n x d` data.
fn two_pass(data: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = data.len() / d;
    let mut mean = vec![0.0; d];
    for row in data.chunks(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0.0; d * d];
    for row in data.chunks(d) {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += (row[i] - mean[i]) * (row[j] - mean[j]);
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= (n - 1) as f64);
    (mean, cov)
}

fn covariance_vec(m: &Moments) -> Vec<f64> {
    let c = m.covariance().unwrap();
    let d = m.dim();
    (0..d * d).map(|k| c[(k / d, k % d)]).collect()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |s, v| s.max(v.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Correlated test data: x = offset + A z with a random mixing matrix.
fn correlated(n: usize, d: usize, offset: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let a = rng.normals(d * d);
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let z = rng.normals(d);
        for i in 0..d {
            let v: f64 = (0..d).map(|k| a[i * d + k] * z[k]).sum();
            out.push(offset + v / (i + 1) as f64);
        }
    }
    out
}

#[test]
fn merged_shards_equal_one_pass() {
    let d = 13;
    let data = correlated(3001, d, 5.0, 1);
    let mut whole = Moments::new(d);
    whole.add_rows_f64(&data).unwrap();

    // Uneven shards, one of them empty, merged in a tree.
    let cuts = [0, 1, 700, 700, 2049, 3001];
    let mut shards: Vec<Moments> = cuts
        .windows(2)
        .map(|w| {
            let mut m = Moments::new(d);
            m.add_rows_f64(&data[w[0] * d..w[1] * d]).unwrap();
            m
        })
        .collect();
    let mut right = shards.pop().unwrap();
    right.merge(&shards.pop().unwrap()).unwrap();
    let mut left = Moments::new(d);
    for s in &shards {
        left.merge(s).unwrap();
    }
    left.merge(&right).unwrap();

    assert_eq!(left.count(), 3001);
    assert!(max_rel(left.mean(), whole.mean()) < 1e-13);
    assert!(max_rel(&covariance_vec(&left), &covariance_vec(&whole)) < 1e-12);
    let (mean, cov) = two_pass(&data, d);
    assert!(max_rel(whole.mean(), &mean) < 1e-13);
    assert!(max_rel(&covariance_vec(&whole), &cov) < 1e-12);

    assert!(matches!(
        left.merge(&Moments::new(d + 1)),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn large_common_offset_keeps_its_digits() {
    // Values near 1e7 with unit-scale spread: the textbook one-pass formula
    // (sum x xᵀ − n x̄ x̄ᵀ) cancels about 14 of f64's 16 digits here.
    let d = 5;
    let offset = 1e7;
    let data = correlated(5000, d, offset, 2);
    let (mean, cov) = two_pass(&data, d);

    let mut m = Moments::new(d);
    for chunk in data.chunks(d * 37) {
        m.add_rows_f64(chunk).unwrap();
    }
    let ours = covariance_vec(&m);
    let err = max_rel(&ours, &cov);
    assert!(err < 1e-9, "streaming covariance off by {err:e}");
    // The mean keeps all but the last few of its ~16 digits: absolute error well below the
    // data's unit spread.
    let mean_err = m
        .mean()
        .iter()
        .zip(&mean)
        .fold(0.0f64, |e, (a, b)| e.max((a - b).abs()));
    assert!(mean_err < 1e-7, "mean off by {mean_err:e}");

    let n = (data.len() / d) as f64;
    let mut naive = vec![0.0; d * d];
    let mut sum = vec![0.0; d];
    for row in data.chunks(d) {
        for i in 0..d {
            sum[i] += row[i];
            for j in 0..d {
                naive[i * d + j] += row[i] * row[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..d {
            naive[i * d + j] = (naive[i * d + j] - sum[i] * sum[j] / n) / (n - 1.0);
        }
    }
    let naive_err = max_rel(&naive, &cov);
    assert!(
        naive_err > 1e3 * err.max(1e-15),
        "the test data should defeat the naive formula (naive {naive_err:e}, ours {err:e})"
    );
}

#[test]
fn known_covariance_gives_exact_spectrum() {
    // Items ±3 e0, ±1 e2 (d = 4): mean 0, covariance diag(6, 0, 2/3·... ) exactly.
    let d = 4;
    let rows: Vec<f32> = vec![
        3.0, 0.0, 0.0, 0.0, //
        -3.0, 0.0, 0.0, 0.0, //
        0.0, 0.0, 1.0, 0.0, //
        0.0, 0.0, -1.0, 0.0,
    ];
    let mut m = Moments::new(d);
    m.add_rows(&rows).unwrap();
    let (model, spec) = fit_model_with_spectrum(&m, &FitOptions::default()).unwrap();
    // cov = Σ x xᵀ / 3: 18/3 = 6 along e0, 2/3 along e2, 0 elsewhere.
    let want = [6.0, 2.0 / 3.0, 0.0, 0.0];
    for (got, want) in spec.eigvals.iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "{:?}", spec.eigvals);
    }
    assert_eq!(model.rank(), 4);
    let e = model.eigvecs();
    assert!(
        (e[0] - 1.0).abs() < 1e-6,
        "u0 = e0 with a positive sign: {:?}",
        &e[..4]
    );
    assert!((e[4 + 2] - 1.0).abs() < 1e-6, "u1 = e2: {:?}", &e[4..8]);
    assert_eq!(model.meta().sample_count, 4);
    assert_eq!(model.residual_var(), 0.0);
}

#[test]
fn eigendecomposition_reconstructs_the_covariance() {
    let d = 24;
    let data = correlated(500, d, -2.0, 3);
    let mut m = Moments::new(d);
    m.add_rows_f64(&data).unwrap();
    let model = fit_model(&m, &FitOptions::default()).unwrap();
    let cov = covariance_vec(&m);
    let (l, e) = (model.eigvals(), model.eigvecs());
    assert!(l.windows(2).all(|w| w[0] >= w[1]));
    let mut rec = vec![0.0; d * d];
    for k in 0..d {
        for i in 0..d {
            for j in 0..d {
                rec[i * d + j] += l[k] * f64::from(e[k * d + i]) * f64::from(e[k * d + j]);
            }
        }
    }
    let err = max_rel(&rec, &cov);
    assert!(err < 1e-6, "U Λ Uᵀ differs from the covariance by {err:e}");
    for (a, b) in model.mean().iter().zip(m.mean()) {
        assert!((f64::from(*a) - b).abs() < 1e-6);
    }
}

#[test]
fn rank_and_residual_options() {
    let d = 16;
    let data = correlated(400, d, 0.0, 4);
    let mut m = Moments::new(d);
    m.add_rows_f64(&data).unwrap();
    let trace: f64 = (0..d).map(|i| m.covariance().unwrap()[(i, i)]).sum();

    let (full, spec) = fit_model_with_spectrum(&m, &FitOptions::default()).unwrap();
    assert_eq!(full.rank(), d);
    assert!((spec.eigvals.iter().sum::<f64>() - trace).abs() < 1e-9 * trace);

    let opts = |rank, residual| FitOptions {
        rank,
        residual,
        ..FitOptions::default()
    };
    let five = fit_model(&m, &opts(Rank::Fixed(5), Residual::Zero)).unwrap();
    assert_eq!(five.rank(), 5);
    assert_eq!(five.residual_var(), 0.0);
    assert_eq!(five.eigvals(), &spec.eigvals[..5]);

    let mean5 = fit_model(&m, &opts(Rank::Fixed(5), Residual::Mean)).unwrap();
    let kept: f64 = mean5.eigvals().iter().sum();
    let total = kept + (d - 5) as f64 * mean5.residual_var();
    assert!((total - trace).abs() < 1e-9 * trace, "trace-preserving λ⊥");
    let discarded: f64 = spec.eigvals[5..].iter().sum::<f64>() / (d - 5) as f64;
    assert!((mean5.residual_var() - discarded).abs() < 1e-12 * trace);

    for f in [0.5, 0.9, 0.99] {
        let model = fit_model(&m, &opts(Rank::Explained(f), Residual::Zero)).unwrap();
        let r = model.rank();
        let cum = |k: usize| spec.eigvals[..k].iter().sum::<f64>();
        assert!(cum(r) >= f * cum(d), "rank {r} explains enough of {f}");
        assert!(
            r == 1 || cum(r - 1) < f * cum(d),
            "rank {r} is the fewest for {f}"
        );
    }

    for bad in [
        Rank::Fixed(0),
        Rank::Fixed(d + 1),
        Rank::Explained(0.0),
        Rank::Explained(1.5),
    ] {
        assert!(
            matches!(
                fit_model(&m, &opts(bad, Residual::Zero)),
                Err(Error::InvalidArgument { .. })
            ),
            "{bad:?}"
        );
    }
    let mut one = Moments::new(d);
    one.add_rows_f64(&data[..d]).unwrap();
    assert!(matches!(
        fit_model(&one, &FitOptions::default()),
        Err(Error::Dataset(_))
    ));
}

#[test]
fn rank_deficient_data_with_constant_pixels() {
    // Half the pixels never change (like MNIST's border); the rest span 3 directions.
    let d = 10;
    let mut rng = Rng::new(5);
    let mut rows = Vec::new();
    for _ in 0..200 {
        let z = rng.normals(3);
        for i in 0..d {
            rows.push(if i % 2 == 0 {
                -1.0f32
            } else {
                (z[i % 3] + 0.5 * z[(i + 1) % 3]) as f32
            });
        }
    }
    let mut m = Moments::new(d);
    m.add_rows(&rows).unwrap();
    let (model, spec) = fit_model_with_spectrum(&m, &FitOptions::default()).unwrap();
    assert_eq!(model.rank(), d, "full rank keeps the zero modes");
    assert!(spec.eigvals[3..]
        .iter()
        .all(|&l| l.abs() < 1e-12 * spec.eigvals[0]));
    assert!(spec.eigvals.iter().all(|&l| l >= 0.0));
    let small = fit_model(
        &m,
        &FitOptions {
            rank: Rank::Explained(1.0),
            residual: Residual::Mean,
            ..FitOptions::default()
        },
    )
    .unwrap();
    assert!(small.rank() <= 4, "rank {}", small.rank());
    assert!(small.residual_var() < 1e-12);
    for i in (0..d).step_by(2) {
        assert_eq!(model.mean()[i], -1.0);
    }
}

#[test]
fn bad_rows_change_nothing() {
    let mut m = Moments::new(3);
    m.add_rows(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let before = (m.count(), m.mean().to_vec());
    assert!(matches!(
        m.add_rows(&[1.0, 2.0]),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        m.add_rows(&[1.0, f32::NAN, 3.0]),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert_eq!((m.count(), m.mean().to_vec()), before);
}

#[test]
fn scale_parsing() {
    let s: Scale = "0,255:-1,1".parse().unwrap();
    assert_eq!(s, Scale::PIXELS);
    assert_eq!(s.apply(0.0), -1.0);
    assert_eq!(s.apply(255.0), 1.0);
    assert_eq!(s.value_space(), "[-1,1]");
    let z: Scale = " 0 , 1 : -1 , 1 ".parse().unwrap();
    assert_eq!(z.apply(0.5), 0.0);
    for bad in [
        "",
        "0,255",
        "0,255:-1",
        "a,b:c,d",
        "0,0:-1,1",
        "0,1:1,1",
        "0,1,2:0,1",
        "0,inf:0,1",
    ] {
        let err = bad.parse::<Scale>().unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { arg: "scale", .. }),
            "{bad}"
        );
    }
}

fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
    let file = fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
}

#[test]
fn image_folder_grey_and_rgb() {
    // Grey: 5 images 4x3; the moments equal those of the pixel values mapped to [-1, 1].
    let dir = temp_dir("grey");
    let mut rng = Rng::new(6);
    let mut expect = Vec::new();
    for i in 0..5 {
        let px: Vec<u8> = (0..12).map(|_| rng.below(256) as u8).collect();
        write_png(
            &dir.join(format!("{i}.png")),
            4,
            3,
            png::ColorType::Grayscale,
            &px,
        );
        expect.extend(px.iter().map(|&p| f64::from(p) / 127.5 - 1.0));
    }
    fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let loaded = moments_from_path(&dir, &InputOptions::default()).unwrap();
    assert_eq!(loaded.item_shape, vec![1, 3, 4]);
    assert_eq!(loaded.value_space, "[-1,1]");
    let mut want = Moments::new(12);
    want.add_rows_f64(&expect).unwrap();
    assert_eq!(loaded.moments.count(), 5);
    assert!(max_rel(loaded.moments.mean(), want.mean()) < 1e-12);
    assert!(max_rel(&covariance_vec(&loaded.moments), &covariance_vec(&want)) < 1e-12);

    // RGBA: alpha dropped, channel-major layout.
    let rgb = temp_dir("rgba");
    let px: Vec<u8> = (0..2 * 2 * 4).map(|k| k as u8 * 10).collect();
    write_png(&rgb.join("a.png"), 2, 2, png::ColorType::Rgba, &px);
    let px2: Vec<u8> = px.iter().map(|p| 255 - p).collect();
    write_png(&rgb.join("b.png"), 2, 2, png::ColorType::Rgba, &px2);
    let loaded = moments_from_path(&rgb, &InputOptions::default()).unwrap();
    assert_eq!(loaded.item_shape, vec![3, 2, 2]);
    // Mean of p and 255 − p is 127.5 → 0 in [-1, 1], whatever the layout.
    assert!(loaded.moments.mean().iter().all(|m| m.abs() < 1e-12));
    // Channel-major: value (ch, pixel) of image a is px[pixel*4 + ch].
    let c = loaded.moments.covariance().unwrap();
    for ch in 0..3 {
        for p in 0..4 {
            let v = f64::from(px[p * 4 + ch]) / 127.5 - 1.0;
            let k = ch * 4 + p;
            assert!((c[(k, k)] - 2.0 * v * v).abs() < 1e-12, "ch {ch} px {p}");
        }
    }
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&rgb);
}

/// Moments of a folder holding copies of one JPEG fixture, in raw 0–255 values.
fn jpeg_folder(tag: &str, fixture: &str, names: &[&str]) -> (PathBuf, gaussskip::fit::Loaded) {
    let dir = temp_dir(tag);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(fixture);
    for name in names {
        fs::copy(&src, dir.join(name)).unwrap();
    }
    let opts = InputOptions {
        scale: Some("0,255:0,255".parse().unwrap()),
        ..InputOptions::default()
    };
    let loaded = moments_from_path(&dir, &opts).unwrap();
    (dir, loaded)
}

#[test]
fn jpeg_images() {
    let (dir, loaded) = jpeg_folder("jpeg", "grey6x4.jpg", &["a.jpg", "b.JPEG"]);
    assert_eq!(loaded.item_shape, vec![1, 4, 6]);
    for (k, m) in loaded.moments.mean().iter().enumerate() {
        let want = 10.0 + 40.0 * (k % 6) as f64;
        assert!((m - want).abs() <= 3.0, "pixel {k}: {m} vs {want}");
    }

    let (rgb, loaded) = jpeg_folder("jpeg-rgb", "rgb6x4.jpg", &["c.jpg", "d.jpg"]);
    assert_eq!(loaded.item_shape, vec![3, 4, 6]);
    for (k, m) in loaded.moments.mean().iter().enumerate() {
        let want = [200.0, 60.0, 30.0][k / 24];
        assert!((m - want).abs() <= 3.0, "value {k}: {m} vs {want}");
    }
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&rgb);
}

#[test]
fn image_folder_errors() {
    let empty = temp_dir("empty");
    fs::write(empty.join("readme.txt"), "no images").unwrap();
    let err = moments_from_path(&empty, &InputOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Dataset(m) if m.contains("no PNG or JPEG")),
        "{err}"
    );

    let mixed = temp_dir("mixed");
    write_png(
        &mixed.join("a.png"),
        2,
        2,
        png::ColorType::Grayscale,
        &[0; 4],
    );
    write_png(
        &mixed.join("b.png"),
        3,
        2,
        png::ColorType::Grayscale,
        &[0; 6],
    );
    let err = moments_from_path(&mixed, &InputOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Dataset(_)), "{msg}");
    assert!(
        msg.contains("a.png") && msg.contains("b.png") && msg.contains("3x2"),
        "{msg}"
    );

    let grey_rgb = temp_dir("grey-rgb");
    write_png(
        &grey_rgb.join("a.png"),
        2,
        2,
        png::ColorType::Grayscale,
        &[0; 4],
    );
    write_png(&grey_rgb.join("b.png"), 2, 2, png::ColorType::Rgb, &[0; 12]);
    let err = moments_from_path(&grey_rgb, &InputOptions::default()).unwrap_err();
    assert!(err.to_string().contains("channel"), "{err}");

    let corrupt = temp_dir("corrupt");
    write_png(
        &corrupt.join("a.png"),
        2,
        2,
        png::ColorType::Grayscale,
        &[0; 4],
    );
    fs::write(corrupt.join("b.png"), b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let err = moments_from_path(&corrupt, &InputOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::FileFormat { path, .. } if path.ends_with("b.png")),
        "{err}"
    );
    fs::remove_file(corrupt.join("b.png")).unwrap();
    fs::write(corrupt.join("c.jpg"), b"\xff\xd8\xff\xe0 truncated").unwrap();
    let err = moments_from_path(&corrupt, &InputOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::FileFormat { path, .. } if path.ends_with("c.jpg")),
        "{err}"
    );

    let missing = empty.join("does-not-exist");
    assert!(matches!(
        moments_from_path(&missing, &InputOptions::default()),
        Err(Error::Io { .. })
    ));
    for d in [empty, mixed, grey_rgb, corrupt] {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn npy_and_npz_arrays() {
    let dir = temp_dir("npy");
    let data = correlated(300, 6, 1.0, 7);
    let rows: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    let path = dir.join("x.npy");
    gaussskip::npy::write_f32(&path, &[300, 2, 3], &rows).unwrap();
    let loaded = moments_from_path(&path, &InputOptions::default()).unwrap();
    assert_eq!(loaded.item_shape, vec![2, 3]);
    assert_eq!(loaded.value_space, "as stored");
    let mut want = Moments::new(6);
    want.add_rows(&rows).unwrap();
    assert!(max_rel(&covariance_vec(&loaded.moments), &covariance_vec(&want)) < 1e-12);

    let scaled = moments_from_path(
        &path,
        &InputOptions {
            scale: Some("0,1:0,2".parse().unwrap()),
            ..InputOptions::default()
        },
    )
    .unwrap();
    assert_eq!(scaled.value_space, "[0,2]");
    for (a, b) in scaled.moments.mean().iter().zip(want.mean()) {
        assert!((a - 2.0 * b).abs() < 1e-12);
    }

    // An .npz (zip) with two arrays: the key chooses; without it the error lists both.
    let npz = dir.join("x.npz");
    {
        let bytes = fs::read(&path).unwrap();
        let mut zw = zip::ZipWriter::new(fs::File::create(&npz).unwrap());
        let opt = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zw.start_file("images.npy", opt).unwrap();
        std::io::Write::write_all(&mut zw, &bytes).unwrap();
        zw.start_file("labels.npy", opt).unwrap();
        std::io::Write::write_all(&mut zw, &bytes).unwrap();
        zw.finish().unwrap();
    }
    let keyed = moments_from_path(
        &npz,
        &InputOptions {
            key: Some("images".into()),
            ..InputOptions::default()
        },
    )
    .unwrap();
    assert!(max_rel(&covariance_vec(&keyed.moments), &covariance_vec(&want)) < 1e-12);
    let err = moments_from_path(&npz, &InputOptions::default()).unwrap_err();
    assert!(err.to_string().contains("images, labels"), "{err}");
    let err = moments_from_path(
        &npz,
        &InputOptions {
            key: Some("nope".into()),
            ..InputOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no array named `nope`"), "{err}");

    // One-dimensional arrays have no item axis; truncated files say so.
    let flat = dir.join("flat.npy");
    gaussskip::npy::write_f32(&flat, &[6], &rows[..6]).unwrap();
    let err = moments_from_path(&flat, &InputOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no item axis"), "{err}");
    let cut = dir.join("cut.npy");
    let bytes = fs::read(&path).unwrap();
    fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    assert!(moments_from_path(&cut, &InputOptions::default()).is_err());
    fs::write(dir.join("junk.npz"), b"PK not really").unwrap();
    assert!(matches!(
        moments_from_path(&dir.join("junk.npz"), &InputOptions::default()),
        Err(Error::FileFormat { .. })
    ));

    // NaN inside the data names the item.
    let mut nan = rows.clone();
    nan[6 * 123 + 4] = f32::NAN;
    let nan_path = dir.join("nan.npy");
    gaussskip::npy::write_f32(&nan_path, &[300, 6], &nan).unwrap();
    let err = moments_from_path(&nan_path, &InputOptions::default()).unwrap_err();
    assert!(err.to_string().contains("item 123"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn safetensors_tensors() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = temp_dir("st");
    let data = correlated(50, 4, 3.0, 8);
    let f64_bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let u8_vals: Vec<u8> = (0..50 * 4).map(|k| (k * 37 % 251) as u8).collect();
    // bfloat16 values exactly representable: small integers.
    let bf16_vals: Vec<f64> = (0..50 * 4).map(|k| ((k * 7) % 13) as f64 - 6.0).collect();
    let bf16_bytes: Vec<u8> = bf16_vals
        .iter()
        .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
        .collect();
    let views = vec![
        (
            "brain".to_string(),
            TensorView::new(Dtype::BF16, vec![50, 4], &bf16_bytes).unwrap(),
        ),
        (
            "x".to_string(),
            TensorView::new(Dtype::F64, vec![50, 4], &f64_bytes).unwrap(),
        ),
        (
            "pixels".to_string(),
            TensorView::new(Dtype::U8, vec![50, 2, 2], &u8_vals).unwrap(),
        ),
    ];
    let path = dir.join("d.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();

    let x = moments_from_path(
        &path,
        &InputOptions {
            key: Some("x".into()),
            ..InputOptions::default()
        },
    )
    .unwrap();
    let mut want = Moments::new(4);
    want.add_rows_f64(&data).unwrap();
    assert!(max_rel(&covariance_vec(&x.moments), &covariance_vec(&want)) < 1e-12);

    let px = moments_from_path(
        &path,
        &InputOptions {
            key: Some("pixels".into()),
            scale: Some(Scale::PIXELS),
            ..InputOptions::default()
        },
    )
    .unwrap();
    assert_eq!(px.item_shape, vec![2, 2]);
    let mut want = Moments::new(4);
    let scaled: Vec<f64> = u8_vals
        .iter()
        .map(|&v| f64::from(v) / 127.5 - 1.0)
        .collect();
    want.add_rows_f64(&scaled).unwrap();
    assert!(max_rel(px.moments.mean(), want.mean()) < 1e-12);

    let err = moments_from_path(&path, &InputOptions::default()).unwrap_err();
    assert!(err.to_string().contains("brain, pixels, x"), "{err}");

    let bf = moments_from_path(
        &path,
        &InputOptions {
            key: Some("brain".into()),
            ..InputOptions::default()
        },
    )
    .unwrap();
    let mut want = Moments::new(4);
    want.add_rows_f64(&bf16_vals).unwrap();
    assert!(max_rel(bf.moments.mean(), want.mean()) < 1e-12);
    assert!(max_rel(&covariance_vec(&bf.moments), &covariance_vec(&want)) < 1e-12);

    let bytes = fs::read(&path).unwrap();
    let cut = dir.join("cut.safetensors");
    fs::write(&cut, &bytes[..bytes.len() - 9]).unwrap();
    let err = moments_from_path(
        &cut,
        &InputOptions {
            key: Some("pixels".into()),
            ..InputOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::FileFormat { .. }), "{err}");
    fs::write(&cut, b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
    assert!(matches!(
        moments_from_path(&cut, &InputOptions::default()),
        Err(Error::FileFormat { .. })
    ));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn cli_fit_writes_a_loadable_model() {
    let dir = temp_dir("cli");
    let imgs = dir.join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    let mut rng = Rng::new(9);
    for i in 0..20 {
        let px: Vec<u8> = (0..9).map(|_| rng.below(256) as u8).collect();
        write_png(
            &imgs.join(format!("{i:02}.png")),
            3,
            3,
            png::ColorType::Grayscale,
            &px,
        );
    }
    let out = dir.join("m.safetensors");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_gaussskip"))
        .args(["fit", imgs.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--rank", "4", "--residual", "mean", "--no-progress"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let model = Model::load(&out).unwrap();
    assert_eq!((model.dim(), model.rank()), (9, 4));
    assert!(model.residual_var() > 0.0);
    assert_eq!(model.meta().item_shape, vec![1, 3, 3]);
    assert_eq!(model.meta().value_space, "[-1,1]");
    assert_eq!(model.meta().sample_count, 20);

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_gaussskip"))
        .args([
            "fit",
            imgs.to_str().unwrap(),
            "-o",
            dir.join("x.safetensors").to_str().unwrap(),
        ])
        .args(["--rank", "10", "--no-progress"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("gaussskip: error:") && err.contains("rank"),
        "{err}"
    );
    assert!(!dir.join("x.safetensors").exists());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn demo_reads_any_fit_input_into_memory() {
    let dir = temp_dir("demo-data");
    let rows: Vec<f32> = (0..5 * 16).map(|k| (k % 7) as f32 - 3.0).collect();
    let path = dir.join("d.npy");
    gaussskip::npy::write_f32(&path, &[5, 4, 4], &rows).unwrap();
    let data = gaussskip::demo::load_dataset(&path, Some("-3,3:-1,1".parse().unwrap())).unwrap();
    assert_eq!((data.items, data.dim), (5, 16));
    assert_eq!(
        data.item_shape,
        vec![1, 4, 4],
        "2-D items become one-channel pictures"
    );
    for (a, b) in data.rows.iter().zip(&rows) {
        assert!((a - b / 3.0).abs() < 1e-6);
    }
    assert!(data.labels.is_empty());
    let err = gaussskip::demo::load_dataset(&dir.join("none.npy"), None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    let _ = fs::remove_dir_all(&dir);
}
