//! C ABI of fitting (gs_moments_*, gs_fit) and the context extras (gs_context_create_cuda,
//! gs_context_prepare, gs_context_release_model), called as a C program would.

use std::ptr;

use gaussskip::ffi::*;
use gaussskip::fit::{fit_model, FitOptions, Moments, Rank, Residual};
use gaussskip::rng::Rng;

fn data(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * d)
        .map(|k| (rng.normal() * (1.0 + (k % d) as f64)) as f32)
        .collect()
}

fn parts(m: *const gs_model) -> (Vec<f32>, Vec<f64>, Vec<f32>, f64) {
    unsafe {
        let (d, r) = (gs_model_dim(m), gs_model_rank(m));
        let (mut mean, mut l, mut e, mut res) =
            (vec![0f32; d], vec![0f64; r], vec![0f32; r * d], 0f64);
        assert_eq!(
            gs_model_get_parts(
                m,
                mean.as_mut_ptr(),
                l.as_mut_ptr(),
                e.as_mut_ptr(),
                &mut res
            ),
            gs_status::GS_OK
        );
        (mean, l, e, res)
    }
}

#[test]
fn moments_and_fit_through_the_abi() {
    let d = 7;
    let x = data(90, d, 1);
    unsafe {
        let (mut a, mut b) = (ptr::null_mut(), ptr::null_mut());
        assert_eq!(gs_moments_create(d, &mut a), gs_status::GS_OK);
        assert_eq!(gs_moments_create(d, &mut b), gs_status::GS_OK);
        assert_eq!(gs_moments_add_rows(a, x.as_ptr(), 40), gs_status::GS_OK);
        assert_eq!(
            gs_moments_add_rows(b, x[40 * d..].as_ptr(), 50),
            gs_status::GS_OK
        );
        assert_eq!(gs_moments_merge(a, b), gs_status::GS_OK);
        assert_eq!(gs_moments_count(a), 90);

        let mut model = ptr::null_mut();
        assert_eq!(
            gs_fit(a, 3, 0.0, GS_RESIDUAL_MEAN, &mut model),
            gs_status::GS_OK
        );
        let mut want = Moments::new(d);
        want.add_rows(&x).unwrap();
        let want = fit_model(
            &want,
            &FitOptions {
                rank: Rank::Fixed(3),
                residual: Residual::Mean,
                ..FitOptions::default()
            },
        )
        .unwrap();
        let (mean, l, e, res) = parts(model);
        assert_eq!(l.len(), 3);
        for (a, b) in l.iter().zip(want.eigvals()) {
            assert!((a - b).abs() <= 1e-9 * b, "{a} vs {b}");
        }
        assert!((res - want.residual_var()).abs() <= 1e-9 * want.residual_var());
        for (a, b) in mean.iter().zip(want.mean()) {
            assert!((a - b).abs() < 1e-6);
        }
        for (a, b) in e.iter().zip(want.eigvecs()) {
            assert!((a - b).abs() < 1e-5);
        }
        gs_model_free(model);

        let mut full = ptr::null_mut();
        assert_eq!(
            gs_fit(a, 0, 0.0, GS_RESIDUAL_ZERO, &mut full),
            gs_status::GS_OK
        );
        assert_eq!(gs_model_rank(full), d);
        gs_model_free(full);
        let mut some = ptr::null_mut();
        assert_eq!(
            gs_fit(a, 0, 0.5, GS_RESIDUAL_ZERO, &mut some),
            gs_status::GS_OK
        );
        assert!(gs_model_rank(some) >= 1 && gs_model_rank(some) < d);
        gs_model_free(some);

        gs_moments_free(a);
        gs_moments_free(b);
        gs_moments_free(ptr::null_mut());
    }
}

#[test]
fn bad_fitting_calls_change_nothing() {
    let d = 4;
    let x = data(10, d, 2);
    unsafe {
        let mut m = ptr::null_mut();
        assert_eq!(
            gs_moments_create(0, &mut m),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert!(m.is_null());
        assert_eq!(
            gs_moments_create(usize::MAX / 4, &mut m),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            gs_moments_create(d, ptr::null_mut()),
            gs_status::GS_ERR_NULL_POINTER
        );
        assert_eq!(gs_moments_create(d, &mut m), gs_status::GS_OK);

        let mut nan = x.clone();
        nan[5] = f32::NAN;
        assert_eq!(
            gs_moments_add_rows(m, nan.as_ptr(), 10),
            gs_status::GS_ERR_NON_FINITE
        );
        assert_eq!(
            gs_moments_add_rows(m, ptr::null(), 10),
            gs_status::GS_ERR_NULL_POINTER
        );
        assert_eq!(
            gs_moments_add_rows(ptr::null_mut(), x.as_ptr(), 10),
            gs_status::GS_ERR_NULL_POINTER
        );
        assert_eq!(gs_moments_count(m), 0, "failed calls added nothing");

        let mut model = ptr::null_mut();
        assert_eq!(
            gs_fit(m, 0, 0.0, GS_RESIDUAL_ZERO, &mut model),
            gs_status::GS_ERR_DATASET
        );
        assert_eq!(gs_moments_add_rows(m, x.as_ptr(), 10), gs_status::GS_OK);
        assert_eq!(
            gs_fit(m, 0, 0.0, 7, &mut model),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            gs_fit(m, 2, 0.5, GS_RESIDUAL_ZERO, &mut model),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            gs_fit(m, d + 1, 0.0, GS_RESIDUAL_ZERO, &mut model),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            gs_fit(m, 0, 1.5, GS_RESIDUAL_ZERO, &mut model),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            gs_fit(m, 0, 0.0, GS_RESIDUAL_ZERO, ptr::null_mut()),
            gs_status::GS_ERR_NULL_POINTER
        );
        assert!(model.is_null(), "no model on failure");

        assert_eq!(gs_moments_merge(m, m), gs_status::GS_ERR_INVALID_ARGUMENT);
        let mut other = ptr::null_mut();
        assert_eq!(gs_moments_create(d + 1, &mut other), gs_status::GS_OK);
        assert_eq!(gs_moments_merge(m, other), gs_status::GS_ERR_SHAPE_MISMATCH);
        assert_eq!(gs_moments_count(m), 10);
        let msg = std::ffi::CStr::from_ptr(gs_last_error_message()).to_string_lossy();
        assert!(msg.contains("moments"), "{msg}");
        gs_moments_free(other);
        gs_moments_free(m);
    }
}

#[test]
fn context_extras() {
    unsafe {
        let mut model = ptr::null_mut();
        let mean = [0f32; 2];
        let l = [4f32];
        let e = [1f32, 0.0];
        assert_eq!(
            gs_model_from_parts(2, 1, mean.as_ptr(), l.as_ptr(), e.as_ptr(), 1.0, &mut model),
            gs_status::GS_OK
        );
        let mut cpu = ptr::null_mut();
        assert_eq!(
            gs_context_create(GS_DEVICE_CPU, 0, &mut cpu),
            gs_status::GS_OK
        );
        assert_eq!(
            gs_context_prepare(cpu, model, 8, 1, ptr::null_mut()),
            gs_status::GS_OK
        );
        assert_eq!(
            gs_context_prepare(cpu, model, 0, 1, ptr::null_mut()),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert_eq!(gs_context_release_model(cpu, model), gs_status::GS_OK);
        assert_eq!(
            gs_context_release_model(ptr::null_mut(), model),
            gs_status::GS_ERR_NULL_POINTER
        );

        let mut cuda = ptr::null_mut();
        assert_eq!(
            gs_context_create_cuda(0, GS_DTYPE_BF16, &mut cuda),
            gs_status::GS_ERR_UNSUPPORTED_DTYPE
        );
        assert_eq!(
            gs_context_create_cuda(-1, GS_DTYPE_F32, &mut cuda),
            gs_status::GS_ERR_INVALID_ARGUMENT
        );
        assert!(cuda.is_null());
        match gs_context_create_cuda(0, GS_DTYPE_F32, &mut cuda) {
            gs_status::GS_OK => {
                assert_eq!(gs_context_device(cuda), GS_DEVICE_CUDA);
                gs_context_free(cuda);
            }
            status => {
                assert_eq!(status, gs_status::GS_ERR_NO_CUDA);
                assert!(cuda.is_null());
                eprintln!("no CUDA device here: the CUDA half of this test is skipped");
            }
        }
        gs_context_free(cpu);
        gs_model_free(model);
    }
}
