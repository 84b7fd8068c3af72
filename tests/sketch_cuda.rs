//! The sketch's cuBLAS products against the CPU path: host batches and device rows (odd
//! batch sizes, more rows than one device batch), both passes, merging device and host
//! sketches, device NaN, foreign pointers, and the time of a pass.
//!
//! Without a usable GPU (driver, device or cuBLAS) every test prints "skipped: no CUDA device
//! (reason)" and passes; set GAUSSSKIP_REQUIRE_CUDA=1 to make that a failure.
#![cfg(feature = "cuda")]

use std::ffi::c_void;
use std::time::Instant;

use cudarc::driver::{result, sys};
use gaussskip::fit::{FitOptions, Rank, Residual, Sketch, SketchOptions};
use gaussskip::rng::Rng;
use gaussskip::{Error, Model};

/// `sketch` on CUDA device 0, or None after printing why the test is skipped.
fn on_gpu(sketch: &mut Sketch) -> Option<()> {
    match sketch.use_cuda(0) {
        Ok(()) => Some(()),
        Err(e) => {
            assert!(
                std::env::var_os("GAUSSSKIP_REQUIRE_CUDA").is_none(),
                "GAUSSSKIP_REQUIRE_CUDA is set but CUDA is unusable: {e}"
            );
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// f64 rows on the device, freed on drop (the sketch's context is current on this thread).
struct DevRows(sys::CUdeviceptr);

impl DevRows {
    fn upload(rows: &[f64]) -> DevRows {
        let ptr = unsafe { result::malloc_sync(rows.len() * 8) }.expect("cuMemAlloc");
        unsafe { result::memcpy_htod_sync(ptr, rows) }.expect("upload");
        DevRows(ptr)
    }
    fn ptr(&self) -> *const c_void {
        self.0 as *const c_void
    }
}

impl Drop for DevRows {
    fn drop(&mut self) {
        let _ = unsafe { result::free_sync(self.0) };
    }
}

fn data(n: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n * d)
        .map(|k| 7.0 + rng.normal() * (1.0 + (k % d) as f64).powf(-0.6))
        .collect()
}

fn fit(s: &Sketch) -> Model {
    s.fit(&FitOptions {
        rank: Rank::Fixed(s.options().rank),
        residual: Residual::Mean,
        ..FitOptions::default()
    })
    .unwrap()
    .0
}

fn assert_close(gpu: &Model, cpu: &Model) {
    for (a, b) in gpu.eigvals().iter().zip(cpu.eigvals()) {
        assert!((a - b).abs() <= 1e-9 * b, "eigval {a} vs {b}");
    }
    for (a, b) in gpu.eigvecs().iter().zip(cpu.eigvecs()) {
        assert!((a - b).abs() <= 1e-5, "eigvec entry {a} vs {b}");
    }
    for (a, b) in gpu.mean().iter().zip(cpu.mean()) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "mean {a} vs {b}");
    }
    let (a, b) = (gpu.residual_var(), cpu.residual_var());
    assert!((a - b).abs() <= 1e-9 * b, "residual {a} vs {b}");
}

#[test]
fn device_products_match_the_cpu() {
    // d = 301 and 5,000 rows: more than one device batch, batch sizes not multiples of 32.
    let (n, d) = (5000, 301);
    let x = data(n, d, 1);
    let opts = SketchOptions {
        passes: 2,
        ..SketchOptions::new(12)
    };
    let mut cpu = Sketch::new(d, &opts).unwrap();
    let mut gpu = Sketch::new(d, &opts).unwrap();
    if on_gpu(&mut gpu).is_none() {
        return;
    }
    // Pass 1: host batches of odd sizes.
    let mut at = 0;
    for size in [1usize, 17, 999, 4000] {
        let rows = &x[at * d..(at + size.min(n - at)) * d];
        cpu.add_rows_f64(rows).unwrap();
        gpu.add_rows_f64(rows).unwrap();
        at += size.min(n - at);
    }
    assert_eq!(at, n);
    cpu.next_pass().unwrap();
    gpu.next_pass().unwrap();
    // Pass 2: device rows, one call and then batches of 3 and 1.
    let dev = DevRows::upload(&x);
    let start = Instant::now();
    unsafe { gpu.add_rows_cuda(dev.ptr(), 4996, std::ptr::null_mut()) }.unwrap();
    let secs = start.elapsed().as_secs_f64();
    for k in [4996usize, 4999] {
        let rows = if k == 4996 { 3 } else { 1 };
        let p = (dev.0 + (k * d * 8) as u64) as *const c_void;
        unsafe { gpu.add_rows_cuda(p, rows, std::ptr::null_mut()) }.unwrap();
    }
    cpu.add_rows_f64(&x).unwrap();
    assert_eq!(gpu.count(), n as u64);
    let width = gpu.width();
    let flops = 4.0 * n as f64 * d as f64 * width as f64;
    eprintln!(
        "device pass of {n} rows x {d} (width {width}): {:.2} ms, {:.1} GFLOP/s",
        secs * 1e3,
        flops / secs / 1e9
    );
    assert_close(&fit(&gpu), &fit(&cpu));
}

#[test]
fn device_and_host_sketches_merge() {
    let (n, d) = (600, 64);
    let x = data(n, d, 2);
    let opts = SketchOptions {
        passes: 1,
        ..SketchOptions::new(6)
    };
    let mut cpu = Sketch::new(d, &opts).unwrap();
    cpu.add_rows_f64(&x).unwrap();
    let mut gpu = Sketch::new(d, &opts).unwrap();
    if on_gpu(&mut gpu).is_none() {
        return;
    }
    // Half on the host of the device sketch, half on its device, a third part merged in.
    let mut host_part = gpu.empty_like();
    host_part.add_rows_f64(&x[..200 * d]).unwrap();
    gpu.add_rows_f64(&x[200 * d..500 * d]).unwrap();
    gpu.merge(&host_part).unwrap();
    let mut tail = gpu.empty_like();
    tail.add_rows_f64(&x[500 * d..]).unwrap();
    gpu.merge(&tail).unwrap();
    assert_eq!(gpu.count(), n as u64);
    // Exported state includes the device's sums.
    let copy = Sketch::from_bytes(&gpu.to_bytes().unwrap()).unwrap();
    assert_close(&fit(&copy), &fit(&cpu));
    assert_close(&fit(&gpu), &fit(&cpu));
    let mut host = Sketch::new(d, &opts).unwrap();
    host.merge(&gpu).unwrap();
    assert_close(&fit(&host), &fit(&cpu));
}

#[test]
fn device_errors_are_reported() {
    let d = 16;
    let x = data(40, d, 3);
    let mut gpu = Sketch::new(
        d,
        &SketchOptions {
            passes: 1,
            ..SketchOptions::new(2)
        },
    )
    .unwrap();
    if on_gpu(&mut gpu).is_none() {
        return;
    }
    // A host pointer is not device memory.
    let err = unsafe { gpu.add_rows_cuda(x.as_ptr() as *const c_void, 2, std::ptr::null_mut()) }
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // A buffer shorter than the rows.
    let short = DevRows::upload(&x[..d]);
    let err = unsafe { gpu.add_rows_cuda(short.ptr(), 2, std::ptr::null_mut()) }.unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert_eq!(gpu.count(), 0);
    // NaN on the device surfaces when the sums are read.
    let mut bad = x.clone();
    bad[5] = f64::NAN;
    let dev = DevRows::upload(&bad);
    unsafe { gpu.add_rows_cuda(dev.ptr(), 40, std::ptr::null_mut()) }.unwrap();
    let err = gpu
        .fit(&FitOptions {
            rank: Rank::Fixed(2),
            ..FitOptions::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("NaN or Inf"), "{err}");
}
