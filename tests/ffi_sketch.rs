//! The C ABI of src/ffi_fit.rs (gs_sketch_*, gs_moments_* extras, gs_model_metadata), called
//! as a C program would: results equal the Rust API's, state moves through exported images,
//! and NULLs, bad sizes and misuse give a status, a message and no output.

use std::ffi::{c_void, CStr};
use std::ptr;

use gaussskip::ffi::*;
use gaussskip::ffi_fit::*;
use gaussskip::fit::{FitOptions, Moments, Rank, Residual, Sketch, SketchOptions};
use gaussskip::rng::Rng;

fn data(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * d)
        .map(|k| (3.0 + rng.normal() * (1.0 + (k % d) as f64).powf(-0.7)) as f32)
        .collect()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(gs_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn eigvals(m: *const gs_model) -> Vec<f64> {
    let mut l = vec![0f64; unsafe { gs_model_rank(m) }];
    let s = unsafe {
        gs_model_get_parts(
            m,
            ptr::null_mut(),
            l.as_mut_ptr(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(s, gs_status::GS_OK);
    l
}

fn metadata(m: *const gs_model) -> serde_json::Value {
    unsafe {
        let mut len = 0usize;
        assert_eq!(
            gs_model_metadata(m, ptr::null_mut(), 0, &mut len),
            gs_status::GS_OK
        );
        let mut small = vec![0 as std::ffi::c_char; len];
        let mut got = 7usize;
        assert_eq!(
            gs_model_metadata(m, small.as_mut_ptr(), len, &mut got),
            gs_status::GS_ERR_SHAPE_MISMATCH,
            "the NUL needs a byte too"
        );
        assert_eq!(got, 7, "len written on failure");
        let mut buf = vec![0 as std::ffi::c_char; len + 1];
        assert_eq!(
            gs_model_metadata(m, buf.as_mut_ptr(), len + 1, &mut got),
            gs_status::GS_OK
        );
        assert_eq!(got, len);
        let text = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
        serde_json::from_str(text).unwrap()
    }
}

fn export(s: *const gs_sketch) -> Vec<u8> {
    unsafe {
        let mut len = 0usize;
        assert_eq!(
            gs_sketch_export(s, ptr::null_mut(), 0, &mut len),
            gs_status::GS_OK
        );
        let mut buf = vec![0u8; len];
        assert_eq!(
            gs_sketch_export(s, buf.as_mut_ptr() as *mut c_void, len - 1, &mut len),
            gs_status::GS_ERR_SHAPE_MISMATCH
        );
        assert!(buf.iter().all(|&b| b == 0), "written on failure");
        assert_eq!(
            gs_sketch_export(s, buf.as_mut_ptr() as *mut c_void, len, &mut len),
            gs_status::GS_OK
        );
        assert_eq!(len, buf.len());
        buf
    }
}

fn info(s: *const gs_sketch) -> gs_sketch_info {
    let mut i = gs_sketch_info::default();
    assert_eq!(unsafe { gs_sketch_get_info(s, &mut i) }, gs_status::GS_OK);
    i
}

#[test]
fn a_sketch_through_the_abi_equals_the_rust_api_and_moves_between_processes() {
    let (n, d) = (200, 30);
    let x = data(n, d, 1);
    let shape = [5usize, 6];
    let space = c"[-1,1]";
    let source = c"abi test";
    let meta = gs_fit_meta {
        item_shape: shape.as_ptr(),
        item_ndim: 2,
        value_space: space.as_ptr(),
        source: source.as_ptr(),
    };
    unsafe {
        let mut s = ptr::null_mut();
        assert_eq!(gs_sketch_create(d, 4, 0, 2, 9, &mut s), gs_status::GS_OK);
        let i = info(s);
        assert_eq!(
            (i.dim, i.rank, i.width, i.pass, i.passes, i.count, i.seed),
            (d, 4, 14, 1, 2, 0, 9)
        );
        // Pass 1 in two shards, one through f64.
        let mut shard = ptr::null_mut();
        assert_eq!(gs_sketch_empty_like(s, &mut shard), gs_status::GS_OK);
        assert_eq!(gs_sketch_add_rows(s, x.as_ptr(), 120), gs_status::GS_OK);
        let tail: Vec<f64> = x[120 * d..].iter().map(|&v| f64::from(v)).collect();
        assert_eq!(
            gs_sketch_add_rows_f64(shard, tail.as_ptr(), 80),
            gs_status::GS_OK
        );
        assert_eq!(gs_sketch_merge(s, shard), gs_status::GS_OK);
        assert_eq!(info(s).count, 200);
        assert_eq!(gs_sketch_merge(s, s), gs_status::GS_ERR_INVALID_ARGUMENT);
        gs_sketch_free(shard);
        let mut early = ptr::null_mut();
        assert_eq!(
            gs_sketch_fit(s, 0, 0.0, GS_RESIDUAL_ZERO, ptr::null(), &mut early),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert!(early.is_null() && last_error().contains("pass 1 of 2"));
        assert_eq!(gs_sketch_next_pass(s), gs_status::GS_OK);
        // Pass 2 on a "worker" that imported the state.
        let state = export(s);
        let mut worker = ptr::null_mut();
        assert_eq!(
            gs_sketch_import(state.as_ptr() as *const c_void, state.len(), &mut worker),
            gs_status::GS_OK
        );
        assert_eq!(info(worker).pass, 2);
        assert_eq!(gs_sketch_add_rows(worker, x.as_ptr(), n), gs_status::GS_OK);
        let back = export(worker);
        gs_sketch_free(worker);
        let mut sums = ptr::null_mut();
        assert_eq!(
            gs_sketch_import(back.as_ptr() as *const c_void, back.len(), &mut sums),
            gs_status::GS_OK
        );
        assert_eq!(gs_sketch_merge(s, sums), gs_status::GS_OK);
        gs_sketch_free(sums);
        assert_eq!(gs_sketch_next_pass(s), gs_status::GS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("last of 2"), "{}", last_error());

        let mut model = ptr::null_mut();
        assert_eq!(
            gs_sketch_fit(s, 3, 0.0, GS_RESIDUAL_MEAN, &meta, &mut model),
            gs_status::GS_OK
        );
        // The Rust API on the same data.
        let mut want = Sketch::new(
            d,
            &SketchOptions {
                passes: 2,
                seed: 9,
                ..SketchOptions::new(4)
            },
        )
        .unwrap();
        want.add_rows(&x).unwrap();
        want.next_pass().unwrap();
        want.add_rows(&x).unwrap();
        let (want, _) = want
            .fit(&FitOptions {
                rank: Rank::Fixed(3),
                residual: Residual::Mean,
                ..FitOptions::default()
            })
            .unwrap();
        for (a, b) in eigvals(model).iter().zip(want.eigvals()) {
            assert!((a - b).abs() <= 1e-10 * b, "{a} vs {b}");
        }
        let meta_json = metadata(model);
        assert_eq!(meta_json["item_shape"], "5,6");
        assert_eq!(meta_json["value_space"], "[-1,1]");
        assert_eq!(meta_json["source"], "abi test");
        assert_eq!(meta_json["sample_count"], "200");
        assert_eq!(meta_json["fit_method"], "sketch");
        assert_eq!(meta_json["fit_passes"], "2");
        assert_eq!(meta_json["fit_sketch_width"], "14");
        gs_model_free(model);

        // Rank 0 = the planned rank; a fraction instead.
        let mut planned = ptr::null_mut();
        assert_eq!(
            gs_sketch_fit(s, 0, 0.0, GS_RESIDUAL_ZERO, ptr::null(), &mut planned),
            gs_status::GS_OK
        );
        assert_eq!(gs_model_rank(planned), 4);
        gs_model_free(planned);
        let mut frac = ptr::null_mut();
        assert_eq!(
            gs_sketch_fit(s, 0, 1e-6, GS_RESIDUAL_ZERO, ptr::null(), &mut frac),
            gs_status::GS_OK
        );
        assert_eq!(gs_model_rank(frac), 1);
        gs_model_free(frac);
        gs_sketch_free(s);
    }
}

#[test]
fn moments_extras_fit_with_metadata_and_round_trip() {
    let (n, d) = (60, 6);
    let x: Vec<f64> = data(n, d, 2).iter().map(|&v| f64::from(v) + 1e3).collect();
    unsafe {
        let mut m = ptr::null_mut();
        assert_eq!(gs_moments_create(d, &mut m), gs_status::GS_OK);
        assert_eq!(gs_moments_add_rows_f64(m, x.as_ptr(), n), gs_status::GS_OK);
        assert_eq!(gs_moments_dim(m), d);
        let (mut mean, mut scatter) = (vec![0f64; d], vec![0f64; d * d]);
        assert_eq!(
            gs_moments_get(m, mean.as_mut_ptr(), scatter.as_mut_ptr()),
            gs_status::GS_OK
        );
        let mut want = Moments::new(d);
        want.add_rows_f64(&x).unwrap();
        assert_eq!(mean, want.mean());
        for i in 0..d {
            for j in 0..d {
                assert_eq!(scatter[i * d + j], want.scatter()[(i, j)]);
            }
        }
        let mut len = 0usize;
        assert_eq!(
            gs_moments_export(m, ptr::null_mut(), 0, &mut len),
            gs_status::GS_OK
        );
        let mut buf = vec![0u8; len];
        assert_eq!(
            gs_moments_export(m, buf.as_mut_ptr() as *mut c_void, len, &mut len),
            gs_status::GS_OK
        );
        let mut copy = ptr::null_mut();
        assert_eq!(
            gs_moments_import(buf.as_ptr() as *const c_void, len, &mut copy),
            gs_status::GS_OK
        );
        assert_eq!(gs_moments_count(copy), 60);
        assert_eq!(gs_moments_merge(copy, m), gs_status::GS_OK);
        assert_eq!(gs_moments_count(copy), 120);
        buf[len / 2] ^= 0xff;
        let mut bad = ptr::null_mut();
        let status = gs_moments_import(buf.as_ptr() as *const c_void, 17, &mut bad);
        assert_eq!(status, gs_status::GS_ERR_FILE_FORMAT);
        assert!(bad.is_null());

        let shape = [2usize, 3];
        let meta = gs_fit_meta {
            item_shape: shape.as_ptr(),
            item_ndim: 2,
            value_space: ptr::null(),
            source: c"moments".as_ptr(),
        };
        let mut model = ptr::null_mut();
        assert_eq!(
            gs_moments_fit(m, 2, 0.0, GS_RESIDUAL_MEAN, &meta, &mut model),
            gs_status::GS_OK
        );
        let json = metadata(model);
        assert_eq!(json["item_shape"], "2,3");
        assert_eq!(json["source"], "moments");
        assert_eq!(json["fit_method"], "exact");
        gs_model_free(model);
        let wrong = gs_fit_meta {
            item_shape: shape.as_ptr(),
            item_ndim: 1,
            ..meta
        };
        let mut none = ptr::null_mut();
        assert_eq!(
            gs_moments_fit(m, 2, 0.0, GS_RESIDUAL_MEAN, &wrong, &mut none),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert!(none.is_null() && last_error().contains("does not have 6 elements"));
        assert_eq!(
            gs_moments_fit(m, 2, 0.5, GS_RESIDUAL_MEAN, ptr::null(), &mut none),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            gs_moments_fit(m, 2, 0.0, 7, ptr::null(), &mut none),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert!(none.is_null());
        gs_moments_free(copy);
        gs_moments_free(m);
    }
}

#[test]
fn nulls_bad_arguments_and_misuse_give_statuses() {
    let d = 5;
    let x = data(10, d, 3);
    unsafe {
        let mut s = ptr::null_mut();
        assert_eq!(
            gs_sketch_create(d, 0, 0, 0, 0, &mut s),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert!(s.is_null() && last_error().contains("rank"));
        assert_eq!(
            gs_sketch_create(d, 2, 0, 0, 0, ptr::null_mut()),
            gs_status::GS_ERR_NULL_POINTER
        );
        assert_eq!(gs_sketch_create(d, 2, 1, 0, 0, &mut s), gs_status::GS_OK);
        let i = info(s);
        assert_eq!((i.width, i.passes), (3, gaussskip::fit::DEFAULT_PASSES));
        let null_sketch: *mut gs_sketch = ptr::null_mut();
        for status in [
            gs_sketch_add_rows(null_sketch, x.as_ptr(), 1),
            gs_sketch_add_rows(s, ptr::null(), 1),
            gs_sketch_add_rows_f64(s, ptr::null(), 1),
            gs_sketch_next_pass(null_sketch),
            gs_sketch_merge(s, ptr::null()),
            gs_sketch_merge(null_sketch, s),
            gs_sketch_get_info(s, ptr::null_mut()),
            gs_sketch_export(s, ptr::null_mut(), 0, ptr::null_mut()),
            gs_sketch_import(ptr::null(), 4, &mut ptr::null_mut()),
            gs_sketch_use_cuda(null_sketch, 0),
            gs_sketch_add_rows_cuda(null_sketch, ptr::null(), 1, ptr::null_mut()),
            gs_model_metadata(ptr::null(), ptr::null_mut(), 0, &mut 0),
            gs_moments_add_rows_f64(ptr::null_mut(), ptr::null(), 1),
            gs_moments_get(ptr::null(), ptr::null_mut(), ptr::null_mut()),
        ] {
            assert_eq!(status, gs_status::GS_ERR_NULL_POINTER, "{}", last_error());
        }
        assert_eq!(
            gs_sketch_add_rows(s, x.as_ptr(), usize::MAX / 2),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        let mut nan = x.clone();
        nan[7] = f32::INFINITY;
        assert_eq!(
            gs_sketch_add_rows(s, nan.as_ptr(), 10),
            gs_status::GS_ERR_NON_FINITE
        );
        assert_eq!(info(s).count, 0);
        assert_eq!(
            gs_sketch_use_cuda(s, -1),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        // Device rows before use_cuda (or without CUDA at all).
        let status = gs_sketch_add_rows_cuda(s, x.as_ptr() as *const c_void, 1, ptr::null_mut());
        assert!(
            matches!(
                status,
                gs_status::GS_ERR_INVALID_ARGUMENT | gs_status::GS_ERR_NO_CUDA
            ),
            "{status:?}"
        );
        let mut other = ptr::null_mut();
        assert_eq!(
            gs_sketch_create(d + 1, 2, 0, 0, 0, &mut other),
            gs_status::GS_OK
        );
        assert_eq!(
            gs_sketch_merge(s, other),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        gs_sketch_free(other);
        let mut junk = ptr::null_mut();
        assert_eq!(
            gs_sketch_import(b"junk".as_ptr() as *const c_void, 4, &mut junk),
            gs_status::GS_ERR_FILE_FORMAT
        );
        assert!(junk.is_null());
        gs_sketch_free(s);
        gs_sketch_free(ptr::null_mut());
    }
}

#[test]
fn cuda_without_a_device_says_so() {
    let has_gpu = std::path::Path::new("/dev/nvidia0").exists();
    let mut s = ptr::null_mut();
    unsafe {
        assert_eq!(gs_sketch_create(8, 2, 0, 1, 0, &mut s), gs_status::GS_OK);
        let status = gs_sketch_use_cuda(s, 0);
        if has_gpu {
            assert!(
                matches!(status, gs_status::GS_OK | gs_status::GS_ERR_NO_CUDA),
                "{status:?}: {}",
                last_error()
            );
        } else {
            assert_eq!(status, gs_status::GS_ERR_NO_CUDA, "{}", last_error());
            assert!(!last_error().is_empty());
        }
        gs_sketch_free(s);
    }
}
