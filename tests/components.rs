//! Models of several components (one Gaussian per class): every row of a mixed batch equals
//! the one-component call on its component and the f64 reference; the file keeps every
//! component, labels and counts, and version-1 files load as one component; bad component
//! indices, lengths, labels and files are refused with the output untouched.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::ptr;

use gaussskip::ffi::gs_status::{GS_ERR_INVALID_ARGUMENT, GS_OK};
use gaussskip::ffi::{gs_model, gs_model_free, gs_skip, GS_DTYPE_F32};
use gaussskip::ffi_components::*;
use gaussskip::model::MAX_COMPONENTS;
use gaussskip::reference::Gaussian;
use gaussskip::rng::Rng;
use gaussskip::{Context, Error, Levels, Model, ModelMeta, Noise, Op};
use half::f16;
use safetensors::tensor::{serialize, Dtype, TensorView};

const D: usize = 8;

fn orthonormal(seed: u64, r: usize, d: usize) -> Vec<f32> {
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

fn meta(count: u64) -> ModelMeta {
    ModelMeta {
        item_shape: vec![2, 4],
        value_space: "[-1,1]".into(),
        sample_count: count,
        source: "components test".into(),
        ..ModelMeta::default()
    }
}

/// One component: rank `r`, its own mean and spectrum, `count` items.
fn part(seed: u64, r: usize, resid: f64, count: u64, label: &str) -> Model {
    let mut rng = Rng::new(seed);
    let mean: Vec<f32> = rng.normals(D).iter().map(|&v| (0.5 * v) as f32).collect();
    let eigvals: Vec<f64> = (0..r)
        .map(|k| 3.0 / (1.0 + k as f64) + seed as f64 * 0.1)
        .collect();
    Model::from_parts(
        mean,
        eigvals,
        orthonormal(seed + 100, r, D),
        resid,
        meta(count),
    )
    .unwrap()
    .with_label(label)
}

/// Three components of different ranks (full, low, one).
fn three() -> Model {
    Model::from_components(
        vec![
            part(1, D, 0.0, 10, "zero"),
            part(2, 3, 0.05, 20, "one"),
            part(3, 1, 0.2, 30, "two"),
        ],
        meta(0),
    )
    .unwrap()
}

fn rows(seed: u64, n: usize) -> Vec<f32> {
    Rng::new(seed)
        .normals(n * D)
        .iter()
        .map(|&v| (20.0 * v) as f32)
        .collect()
}

fn rel(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn ops<'a>(per_row: &'a [Noise], traj: &'a [Noise]) -> Vec<Op<'a>> {
    vec![
        Op::Skip {
            from: Noise::edm(80.0).into(),
            to: Noise::edm(2.0).into(),
        },
        Op::Skip {
            from: Levels::PerRow(per_row),
            to: Noise::edm(0.5).into(),
        },
        Op::Denoise {
            at: Levels::PerRow(per_row),
        },
        Op::SkipTrajectory {
            from: Noise::edm(40.0).into(),
            levels: traj,
        },
        Op::X0Trajectory {
            from: Levels::PerRow(per_row),
            levels: traj,
        },
    ]
}

#[test]
fn every_row_equals_the_one_component_call_and_the_f64_reference() {
    let model = three();
    let ctx = Context::cpu();
    let comp: Vec<u32> = vec![2, 0, 1, 1, 0, 2, 2, 1, 0];
    let b = comp.len();
    let x = rows(7, b);
    let per_row: Vec<Noise> = (0..b).map(|i| Noise::edm(5.0 + 7.0 * i as f64)).collect();
    let traj = [Noise::edm(20.0), Noise::edm(3.0), Noise::edm(0.0)];
    for op in ops(&per_row, &traj) {
        let s = op.slabs();
        let mut out = vec![f32::NAN; s * b * D];
        ctx.apply_components(&model, op, &x, &mut out, Some(&comp))
            .unwrap();
        for (i, &c) in comp.iter().enumerate() {
            let one = model.component(c as usize).unwrap();
            // The row alone, with its own levels, on its component.
            let sub = match op {
                Op::Skip { to, .. } => Op::Skip {
                    from: match op {
                        Op::Skip {
                            from: Levels::PerRow(v),
                            ..
                        } => Levels::One(v[i]),
                        Op::Skip { from, .. } => from,
                        _ => unreachable!(),
                    },
                    to,
                },
                Op::Denoise { .. } => Op::Denoise {
                    at: Levels::One(per_row[i]),
                },
                Op::SkipTrajectory { from, levels } => Op::SkipTrajectory { from, levels },
                Op::X0Trajectory { levels, .. } => Op::X0Trajectory {
                    from: Levels::One(per_row[i]),
                    levels,
                },
            };
            let xi = &x[i * D..(i + 1) * D];
            let mut alone = vec![f32::NAN; s * D];
            ctx.apply(&one, sub, xi, &mut alone).unwrap();
            let want = Gaussian::from_model(&one)
                .apply(sub, &xi.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1)
                .unwrap();
            for sl in 0..s {
                let got = &out[(sl * b + i) * D..(sl * b + i + 1) * D];
                let a = &alone[sl * D..(sl + 1) * D];
                let w = &want[sl * D..(sl + 1) * D];
                let e = rel(got, w);
                assert!(
                    e <= 1e-5,
                    "{op:?} row {i} slab {sl}: {e:e} from the f64 reference"
                );
                let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
                let e = rel(got, &a64);
                assert!(
                    e <= 1e-6,
                    "{op:?} row {i} slab {sl}: {e:e} from the one-row call"
                );
            }
        }
    }
}

#[test]
fn one_component_for_all_rows_is_the_plain_call_on_it() {
    let model = three();
    let ctx = Context::cpu();
    let x = rows(8, 5);
    for k in 0..3u32 {
        let mut a = vec![0f32; x.len()];
        let mut b = vec![0f32; x.len()];
        ctx.apply_components(
            &model,
            Op::Skip {
                from: Noise::edm(30.0).into(),
                to: Noise::edm(1.0).into(),
            },
            &x,
            &mut a,
            Some(&[k; 5]),
        )
        .unwrap();
        ctx.skip(
            &model.component(k as usize).unwrap(),
            &x,
            &mut b,
            Noise::edm(30.0),
            Noise::edm(1.0),
        )
        .unwrap();
        assert_eq!(a, b, "component {k}");
    }
    // No indices: component 0 everywhere.
    let mut a = vec![0f32; x.len()];
    let mut b = vec![0f32; x.len()];
    ctx.skip(&model, &x, &mut a, Noise::edm(30.0), Noise::edm(1.0))
        .unwrap();
    ctx.skip(
        &model.component(0).unwrap(),
        &x,
        &mut b,
        Noise::edm(30.0),
        Noise::edm(1.0),
    )
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn half_precision_rows_follow_their_component() {
    let model = three();
    let ctx = Context::cpu();
    let comp = [1u32, 2, 0, 1];
    let x32 = rows(9, 4);
    let x: Vec<f16> = x32.iter().map(|&v| f16::from_f32(v)).collect();
    let mut out = vec![f16::from_f32(0.0); x.len()];
    ctx.apply_components(
        &model,
        Op::Skip {
            from: Noise::edm(50.0).into(),
            to: Noise::edm(4.0).into(),
        },
        &x,
        &mut out,
        Some(&comp),
    )
    .unwrap();
    for (i, &c) in comp.iter().enumerate() {
        let xi: Vec<f64> = x[i * D..(i + 1) * D].iter().map(|v| v.to_f64()).collect();
        let want = Gaussian::from_model(&model.component(c as usize).unwrap()).skip(
            &xi,
            Noise::edm(50.0),
            Noise::edm(4.0),
        );
        let got: Vec<f32> = out[i * D..(i + 1) * D].iter().map(|v| v.to_f32()).collect();
        assert!(rel(&got, &want) <= 2e-3, "row {i}");
    }
}

#[test]
fn bad_component_indices_are_refused_with_the_output_untouched() {
    let model = three();
    let ctx = Context::cpu();
    let x = rows(10, 3);
    let op = Op::Skip {
        from: Noise::edm(10.0).into(),
        to: Noise::edm(1.0).into(),
    };
    let mut out = vec![7.0f32; x.len()];
    let e = ctx
        .apply_components(&model, op, &x, &mut out, Some(&[0, 3, 1]))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { arg: "component", reason } if reason.contains("row 1") && reason.contains("3 component")),
        "{e}"
    );
    let e = ctx
        .apply_components(&model, op, &x, &mut out, Some(&[0, 1]))
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    // A NaN in a later group: refused before anything is written, named by its own index.
    let mut bad = x.clone();
    bad[2 * D + 5] = f32::NAN;
    let e = ctx
        .apply_components(&model, op, &bad, &mut out, Some(&[0, 1, 2]))
        .unwrap_err();
    assert!(
        matches!(e, Error::NonFinite { arg: "x", index } if index == 2 * D + 5),
        "{e}"
    );
    // Per-row levels of the wrong length stop the whole call.
    let per_row = [Noise::edm(1.0), Noise::edm(1.0)];
    let e = ctx
        .apply_components(
            &model,
            Op::Denoise {
                at: Levels::PerRow(&per_row),
            },
            &x,
            &mut out,
            Some(&[0, 1, 2]),
        )
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(out.iter().all(|&v| v == 7.0), "out was written");
}

#[test]
fn components_keep_labels_counts_and_ranks() {
    let model = three();
    assert_eq!(model.n_components(), 3);
    assert_eq!(model.labels(), ["zero", "one", "two"]);
    assert_eq!(model.counts(), [10, 20, 30]);
    assert_eq!(model.meta().sample_count, 60);
    assert_eq!(model.component_index("two"), Some(2));
    assert_eq!(model.max_rank(), D);
    let c = model.component(1).unwrap();
    assert_eq!(
        (c.n_components(), c.rank(), c.label(), c.meta().sample_count),
        (1, 3, "one", 20)
    );
    assert!(matches!(
        model.component(3),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn joining_components_checks_dims_labels_and_nesting() {
    let other_dim = Model::from_parts(
        vec![0.0; 4],
        vec![1.0],
        orthonormal(5, 1, 4),
        0.0,
        ModelMeta::default(),
    )
    .unwrap()
    .with_label("x");
    let e = Model::from_components(vec![part(1, 2, 0.0, 1, "a"), other_dim], meta(0)).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let e = Model::from_components(
        vec![part(1, 2, 0.0, 1, "a"), part(2, 2, 0.0, 1, "a")],
        meta(0),
    )
    .unwrap_err();
    assert!(e.to_string().contains("used by two"), "{e}");
    let e = Model::from_components(
        vec![part(1, 2, 0.0, 1, "a"), part(2, 2, 0.0, 1, "")],
        meta(0),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no label"), "{e}");
    let e = Model::from_components(vec![three()], meta(0)).unwrap_err();
    assert!(e.to_string().contains("holds 3 components"), "{e}");
    assert!(Model::from_components(vec![], meta(0)).is_err());
    // One component needs no label.
    let one = Model::from_components(vec![part(1, 2, 0.0, 4, "")], meta(0)).unwrap();
    assert_eq!((one.n_components(), one.meta().sample_count), (1, 4));
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "gaussskip-components-{}-{name}",
        std::process::id()
    ))
}

#[test]
fn the_file_keeps_every_component() {
    let model = three();
    let path = temp("three.safetensors");
    model.save(&path).unwrap();
    let back = Model::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(back.labels(), model.labels());
    assert_eq!(back.counts(), model.counts());
    assert_eq!(back.meta(), model.meta());
    for k in 0..3 {
        let (a, b) = (model.component(k).unwrap(), back.component(k).unwrap());
        assert_eq!(a.mean(), b.mean());
        assert_eq!(a.eigvals(), b.eigvals());
        assert_eq!(a.eigvecs(), b.eigvecs());
        assert_eq!(a.residual_var(), b.residual_var());
    }
    let meta = model.file_metadata();
    assert_eq!(meta["format_version"], "2");
    assert_eq!(
        meta["components"],
        r#"[{"count":10,"label":"zero"},{"count":20,"label":"one"},{"count":30,"label":"two"}]"#
    );
}

/// A file written by hand: `tensors` as (name, f32 or f64 values, shape), `meta` as given.
fn write_file(
    path: &std::path::Path,
    tensors: &[(&str, Vec<f64>, Vec<usize>, bool)],
    meta: &[(&str, &str)],
) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, v, _, f64s)| {
            if *f64s {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            } else {
                v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()
            }
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, _, shape, f64s), b)| {
            let dt = if *f64s { Dtype::F64 } else { Dtype::F32 };
            (
                n.to_string(),
                TensorView::new(dt, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    std::fs::write(path, serialize(views, Some(meta)).unwrap()).unwrap();
}

fn one_part_tensors(suffix: &str) -> Vec<(String, Vec<f64>, Vec<usize>, bool)> {
    vec![
        (format!("mean{suffix}"), vec![0.5; 2], vec![2], false),
        (format!("eigvals{suffix}"), vec![2.0], vec![1], true),
        (
            format!("eigvecs{suffix}"),
            vec![0.6, 0.8],
            vec![1, 2],
            false,
        ),
        (format!("residual_var{suffix}"), vec![0.25], vec![], true),
    ]
}

fn load_with(parts: &[&str], meta: &[(&str, &str)]) -> Result<Model, Error> {
    let owned: Vec<_> = parts.iter().flat_map(|s| one_part_tensors(s)).collect();
    let t: Vec<(&str, Vec<f64>, Vec<usize>, bool)> = owned
        .iter()
        .map(|(n, v, s, f)| (n.as_str(), v.clone(), s.clone(), *f))
        .collect();
    let path = temp(&format!(
        "hand-{}.safetensors",
        parts.len() * 100 + meta.len()
    ));
    write_file(&path, &t, meta);
    let r = Model::load(&path);
    let _ = std::fs::remove_file(&path);
    r
}

#[test]
fn version_one_files_load_as_one_component() {
    let m = load_with(
        &[""],
        &[
            ("format", "gaussskip"),
            ("format_version", "1"),
            ("sample_count", "9"),
        ],
    )
    .unwrap();
    assert_eq!(
        (
            m.n_components(),
            m.label(),
            m.count(),
            m.meta().sample_count
        ),
        (1, "", 9, 9)
    );
    assert_eq!(m.eigvals(), [2.0]);
}

#[test]
fn broken_component_files_are_refused() {
    let v2 = |components: &str| -> Vec<(&'static str, String)> {
        vec![
            ("format", "gaussskip".into()),
            ("format_version", "2".into()),
            ("sample_count", "3".into()),
            ("components", components.into()),
        ]
    };
    let call = |parts: &[&str], m: Vec<(&'static str, String)>| {
        let m: Vec<(&str, &str)> = m.iter().map(|(k, v)| (*k, v.as_str())).collect();
        load_with(parts, &m)
    };
    let ok = r#"[{"label":"a","count":1},{"label":"b","count":2}]"#;
    call(&["", ".1"], v2(ok)).unwrap();
    for (parts, comps, want) in [
        (vec![""], ok, "tensor `mean.1` is missing"),
        (
            vec!["", ".1", ".2"],
            ok,
            "tensor `eigvals.2` is not part of a model of 2",
        ),
        (vec!["", ".1"], "[]", "holds 0 entries"),
        (vec!["", ".1"], "{}", "not a JSON list"),
        (
            vec!["", ".1"],
            r#"[{"label":"a"},{"label":"b","count":2}]"#,
            "entry 0",
        ),
        (
            vec!["", ".1"],
            r#"[{"label":"a","count":1},{"label":"a","count":2}]"#,
            "used by two",
        ),
        (
            vec!["", ".1"],
            r#"[{"label":"a","count":1},{"label":"b","count":1}]"#,
            "not the sum",
        ),
    ] {
        let e = call(&parts, v2(comps)).unwrap_err();
        assert!(matches!(e, Error::FileFormat { .. }), "{e}");
        assert!(e.to_string().contains(want), "{comps}: {e} (wanted {want})");
    }
    let mut m = v2(ok);
    m.retain(|(k, _)| *k != "components");
    let e = call(&["", ".1"], m).unwrap_err();
    assert!(e.to_string().contains("`components` is missing"), "{e}");
    let mut m = v2(ok);
    m[1].1 = "3".into();
    assert!(call(&["", ".1"], m)
        .unwrap_err()
        .to_string()
        .contains("not supported"));
    const { assert!(MAX_COMPONENTS >= 1000) };
}

#[test]
fn the_c_abi_takes_a_component_per_row() {
    let model = three();
    let x = rows(11, 3);
    let comp = [2u32, 0, 1];
    unsafe {
        let mut ctx = ptr::null_mut();
        assert_eq!(gaussskip::ffi::gs_context_create(1, 0, &mut ctx), GS_OK);
        let m = Box::into_raw(Box::new(gs_model_wrap(three())));
        let (from, to) = (
            gaussskip::ffi::gs_noise {
                alpha: 1.0,
                sigma: 30.0,
            },
            gaussskip::ffi::gs_noise {
                alpha: 1.0,
                sigma: 3.0,
            },
        );
        let mut out = vec![0f32; x.len()];
        let st = gs_skip_component(
            ctx,
            m,
            GS_DTYPE_F32,
            x.as_ptr() as *const c_void,
            out.as_mut_ptr() as *mut c_void,
            3,
            from,
            to,
            comp.as_ptr(),
            ptr::null_mut(),
        );
        assert_eq!(st, GS_OK);
        let mut want = vec![0f32; x.len()];
        Context::cpu()
            .apply_components(
                &model,
                Op::Skip {
                    from: Noise::edm(30.0).into(),
                    to: Noise::edm(3.0).into(),
                },
                &x,
                &mut want,
                Some(&comp),
            )
            .unwrap();
        assert_eq!(out, want);
        // NULL: component 0 for every row, the same as gs_skip.
        let mut plain = vec![0f32; x.len()];
        assert_eq!(
            gs_skip_component(
                ctx,
                m,
                GS_DTYPE_F32,
                x.as_ptr() as *const c_void,
                out.as_mut_ptr() as *mut c_void,
                3,
                from,
                to,
                ptr::null(),
                ptr::null_mut()
            ),
            GS_OK
        );
        assert_eq!(
            gs_skip(
                ctx,
                m,
                GS_DTYPE_F32,
                x.as_ptr() as *const c_void,
                plain.as_mut_ptr() as *mut c_void,
                3,
                from,
                to,
                ptr::null_mut()
            ),
            GS_OK
        );
        assert_eq!(out, plain);
        // Out of range: refused, out untouched.
        let before = out.clone();
        let bad = [0u32, 3, 0];
        let st = gs_skip_component(
            ctx,
            m,
            GS_DTYPE_F32,
            x.as_ptr() as *const c_void,
            out.as_mut_ptr() as *mut c_void,
            3,
            from,
            to,
            bad.as_ptr(),
            ptr::null_mut(),
        );
        assert_eq!(st, GS_ERR_INVALID_ARGUMENT);
        assert_eq!(out, before);
        // Components out and back in.
        let mut n = 0usize;
        assert_eq!(gs_model_n_components(m, &mut n), GS_OK);
        assert_eq!(n, 3);
        let mut len = 0usize;
        let mut count = 0u64;
        assert_eq!(
            gs_model_component_info(m, 2, ptr::null_mut(), 0, &mut len, &mut count),
            GS_OK
        );
        assert_eq!((len, count), (3, 30));
        let mut buf = vec![0u8; len + 1];
        assert_eq!(
            gs_model_component_info(
                m,
                2,
                buf.as_mut_ptr() as *mut _,
                buf.len(),
                &mut len,
                ptr::null_mut()
            ),
            GS_OK
        );
        assert_eq!(&buf, b"two\0");
        assert_ne!(
            gs_model_component_info(m, 3, ptr::null_mut(), 0, &mut len, ptr::null_mut()),
            GS_OK
        );
        let mut parts = [ptr::null_mut(); 3];
        for (k, p) in parts.iter_mut().enumerate() {
            assert_eq!(gs_model_component(m, k, p), GS_OK);
        }
        let labels: Vec<CString> = ["p", "q", "r"]
            .iter()
            .map(|s| CString::new(*s).unwrap())
            .collect();
        let lp: Vec<*const std::ffi::c_char> = labels.iter().map(|s| s.as_ptr()).collect();
        let pp: Vec<*const gs_model> = parts.iter().map(|&p| p as *const gs_model).collect();
        let mut joined = ptr::null_mut();
        assert_eq!(
            gs_model_from_components(pp.as_ptr(), lp.as_ptr(), 3, &mut joined),
            GS_OK
        );
        let mut again = vec![0f32; x.len()];
        assert_eq!(
            gs_skip_component(
                ctx,
                joined,
                GS_DTYPE_F32,
                x.as_ptr() as *const c_void,
                again.as_mut_ptr() as *mut c_void,
                3,
                from,
                to,
                comp.as_ptr(),
                ptr::null_mut()
            ),
            GS_OK
        );
        assert_eq!(again, want);
        let same = [lp[0], lp[0], lp[1]];
        let mut none = ptr::null_mut();
        assert_eq!(
            gs_model_from_components(pp.as_ptr(), same.as_ptr(), 3, &mut none),
            GS_ERR_INVALID_ARGUMENT
        );
        assert!(none.is_null());
        for p in parts {
            gs_model_free(p);
        }
        gs_model_free(joined);
        gs_model_free(m);
        gaussskip::ffi::gs_context_free(ctx);
    }
}

/// A C handle around a Rust model (what `gs_model_load` returns).
fn gs_model_wrap(m: Model) -> gs_model {
    let path = temp("wrap.safetensors");
    m.save(&path).unwrap();
    let c = CString::new(path.to_str().unwrap()).unwrap();
    let mut out = ptr::null_mut();
    unsafe {
        assert_eq!(gaussskip::ffi::gs_model_load(c.as_ptr(), &mut out), GS_OK);
        let _ = std::fs::remove_file(&path);
        *Box::from_raw(out)
    }
}
