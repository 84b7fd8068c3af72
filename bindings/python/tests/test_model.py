"""CPU path with NumPy: every operation against the float64 oracle of SPEC §4 (conftest.py),
shapes and dtypes, bad inputs, files, and finding the library."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gaussskip as gs
from conftest import Reference, make_parts, rel_err

F32_TOL = 1e-5
# float16 I/O: the output is rounded to half precision (2^-11 relative per element); the
# oracle runs on the same half-rounded input.
F16_TOL = 1e-3

LEVEL_PAIRS = [
    (80.0, 19.4),  # EDM: the published jump
    (80.0, 0.0),  # all the way to the data
    (0.5, 40.0),  # backwards: exact inversion
    (gs.flow(1.0), gs.flow(0.3)),  # from pure noise (alpha = 0)
    (gs.vp(0.01), gs.vp(0.9)),  # VP
    (gs.vp(0.2), 3.0),  # mixed parameterisations
]


def noisy(model, batch, sigma, seed, item=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, model.dim)) * sigma + model.mean
    if item is not None:
        x = x.reshape(batch, *item)
    return x.astype(np.float32)


@pytest.mark.parametrize("frm,to", LEVEL_PAIRS)
def test_skip_matches_reference(toy, frm, to):
    model, ref = toy
    x = noisy(model, 9, 5.0, seed=1)
    got = model.skip(x, frm, to)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert rel_err(got, ref.skip(x, frm, to)) <= F32_TOL


@pytest.mark.parametrize("at", [80.0, 1.0, 0.01, gs.vp(0.5), gs.flow(0.9), 0.0])
def test_denoise_matches_reference_and_full_covariance(toy, at):
    model, ref = toy
    x = noisy(model, 7, 2.0, seed=2)
    got = model.denoise(x, at)
    want = ref.denoise(x, at)
    assert rel_err(got, want) <= F32_TOL
    # Independent formula with the dense covariance: D = mu + a S (a^2 S + s^2 I)^-1 (x - a mu).
    n = at if isinstance(at, gs.Noise) else gs.Noise(1.0, at)
    if n.sigma > 0:
        d = model.dim
        u = ref.vecs
        cov = u.T @ np.diag(ref.vals) @ u + ref.resid * (np.eye(d) - u.T @ u)
        gain = n.alpha * cov @ np.linalg.inv(n.alpha**2 * cov + n.sigma**2 * np.eye(d))
        dense = ref.mean + (x - n.alpha * ref.mean) @ gain.T
        assert rel_err(got, dense) <= F32_TOL


def test_per_row_levels(toy):
    model, ref = toy
    x = noisy(model, 5, 10.0, seed=3)
    frm = [80.0, gs.vp(0.05), 10.0, gs.flow(1.0), 2.0]
    to = [19.4, gs.vp(0.7), 0.0, gs.flow(0.5), 30.0]
    assert rel_err(model.skip(x, frm, to), ref.skip(x, frm, to)) <= F32_TOL
    at = np.array([80.0, 5.0, 1.0, 0.1, 0.0])  # a 1-D array of EDM sigmas
    assert rel_err(model.denoise(x, at), ref.denoise(x, list(at))) <= F32_TOL
    # One row with a uniform level equals that row of a per-row call (up to f32 rounding:
    # the GEMM blocking depends on the batch).
    row = model.skip(x[2:3], 10.0, 0.0)
    assert rel_err(row[0], model.skip(x, frm, to)[2].astype(np.float64)) <= 1e-6


def test_trajectories(toy):
    model, ref = toy
    x = noisy(model, 6, 80.0, seed=4)
    levels = [60.0, 19.4, gs.vp(0.5), 0.0]
    traj = model.skip_trajectory(x, 80.0, levels)
    assert traj.shape == (4, *x.shape)
    for i, lv in enumerate(levels):
        assert rel_err(traj[i], ref.skip(x, 80.0, lv)) <= F32_TOL
        # The state at each level equals a single skip there.
        assert rel_err(traj[i], model.skip(x, 80.0, lv)) <= F32_TOL
    x0 = model.x0_trajectory(x, 80.0, levels)
    for i, lv in enumerate(levels):
        assert rel_err(x0[i], ref.x0_along(x, 80.0, lv)) <= F32_TOL
    # At sigma = 0 the x0-prediction is the state itself.
    assert rel_err(x0[-1], traj[-1]) <= F32_TOL


def test_float16_io(toy):
    model, ref = toy
    x16 = noisy(model, 8, 3.0, seed=5).astype(np.float16)
    got = model.skip(x16, 80.0, 10.0)
    assert got.dtype == np.float16
    assert rel_err(got, ref.skip(x16.astype(np.float64), 80.0, 10.0)) <= F16_TOL
    assert rel_err(model.denoise(x16, 1.0), ref.denoise(x16.astype(np.float64), 1.0)) <= F16_TOL


def test_float64_is_computed_in_float32_and_returned_as_float64(toy):
    model, ref = toy
    x = noisy(model, 4, 3.0, seed=6).astype(np.float64)
    got = model.skip(x, 80.0, 5.0)
    assert got.dtype == np.float64
    assert rel_err(got, ref.skip(x, 80.0, 5.0)) <= F32_TOL


def test_shapes_single_row_and_item_shapes():
    parts = make_parts(24, 24, 0.0, seed=7)
    model, ref = gs.Model.from_arrays(*parts), Reference(*parts)
    x = noisy(model, 3, 4.0, seed=8, item=(2, 3, 4))
    got = model.skip(x, 80.0, 2.0)
    assert got.shape == (3, 2, 3, 4)
    assert rel_err(got.reshape(3, -1), ref.skip(x.reshape(3, -1), 80.0, 2.0)) <= F32_TOL
    one = model.skip(x[1], 80.0, 2.0)  # (*item,) is one row
    assert one.shape == (2, 3, 4)
    assert rel_err(one, got[1].astype(np.float64)) <= 1e-6
    flat = model.denoise(x[0].reshape(-1), 1.0)
    assert flat.shape == (24,)
    traj = model.skip_trajectory(x[0], 80.0, [10.0, 1.0])
    assert traj.shape == (2, 2, 3, 4)


def test_non_contiguous_input_is_copied(toy):
    model, ref = toy
    wide = noisy(model, 6, 3.0, seed=9)
    x = np.asfortranarray(wide)[::2]  # strided rows, Fortran order
    assert not x.flags.c_contiguous
    got = model.skip(x, 50.0, 1.0)
    np.testing.assert_array_equal(got, model.skip(np.ascontiguousarray(x), 50.0, 1.0))
    assert rel_err(got, ref.skip(x, 50.0, 1.0)) <= F32_TOL


def test_out_argument(toy):
    model, ref = toy
    x = noisy(model, 3, 3.0, seed=10)
    out = np.full_like(x, np.nan)
    res = model.skip(x, 80.0, 1.0, out=out)
    assert res is out
    assert rel_err(out, ref.skip(x, 80.0, 1.0)) <= F32_TOL
    with pytest.raises(gs.ShapeMismatchError, match="`out` has the wrong size"):
        model.skip(x, 80.0, 1.0, out=np.empty(x.shape, np.float16))
    # float64 input with a float64 out.
    out64 = np.zeros(x.shape)
    model.denoise(x.astype(np.float64), 1.0, out=out64)
    assert rel_err(out64, ref.denoise(x, 1.0)) <= F32_TOL


def test_errors_carry_the_library_message_and_leave_out_untouched(toy):
    model, _ = toy
    x = noisy(model, 4, 3.0, seed=11)
    poison = np.full_like(x, 1234.5)

    bad = x.copy()
    bad[2, 5] = np.nan
    out = poison.copy()
    with pytest.raises(gs.NonFiniteError, match=r"`x` holds a non-finite value \(NaN or Inf\) at index") as e:
        model.skip(bad, 80.0, 1.0, out=out)
    assert e.value.status == 4 and isinstance(e.value, gs.GaussSkipError) and isinstance(e.value, ValueError)
    np.testing.assert_array_equal(out, poison)

    with pytest.raises(gs.InvalidNoiseError, match="alpha and sigma must be >= 0"):
        model.skip(x, 80.0, -1.0, out=out)
    with pytest.raises(gs.InvalidNoiseError, match="a skip must start from sigma > 0"):
        model.skip(x, 0.0, 1.0, out=out)
    with pytest.raises(gs.InvalidNoiseError, match="must be finite"):
        model.denoise(x, float("inf"), out=out)
    with pytest.raises(gs.InvalidNoiseError, match="cannot both be 0"):
        model.denoise(x, gs.Noise(0.0, 0.0), out=out)
    with pytest.raises(gs.InvalidNoiseError):
        model.denoise(x, gs.vp(1.5), out=out)  # alpha_bar > 1
    np.testing.assert_array_equal(out, poison)

    with pytest.raises(gs.ShapeMismatchError, match="values per item"):
        model.skip(np.zeros((4, model.dim + 1), np.float32), 80.0, 1.0)
    with pytest.raises(gs.InvalidArgumentError, match="batch.*at least 1"):
        model.skip(np.zeros((0, model.dim), np.float32), 80.0, 1.0)
    with pytest.raises(gs.ShapeMismatchError, match=r"expected 4 levels \(one per row\), got 3"):
        model.skip(x, [80.0] * 3, 1.0)
    with pytest.raises(gs.UnsupportedDtypeError, match="int32") as e:
        model.skip(x.astype(np.int32), 80.0, 1.0)
    assert isinstance(e.value, TypeError)
    with pytest.raises(gs.InvalidArgumentError, match="one source level for all rows"):
        model.skip_trajectory(x, [80.0] * 4, [1.0])
    with pytest.raises(gs.InvalidArgumentError, match="at least one level"):
        model.x0_trajectory(x, 80.0, [])
    with pytest.raises(TypeError, match="noise level"):
        model.skip(x, "80", 1.0)


def test_save_load_round_trip(tmp_path, toy):
    model, _ = toy
    path = tmp_path / "m.safetensors"
    model.save(path)
    back = gs.Model.load(path)
    assert (back.dim, back.rank) == (model.dim, model.rank)
    np.testing.assert_array_equal(back.mean, model.mean)
    np.testing.assert_array_equal(back.eigvals, model.eigvals)
    np.testing.assert_array_equal(back.eigvecs, model.eigvecs)
    assert back.residual_var == model.residual_var
    assert back.metadata["format"] == "gaussskip"
    x = noisy(model, 3, 3.0, seed=12)
    np.testing.assert_array_equal(back.skip(x, 80.0, 1.0), model.skip(x, 80.0, 1.0))


def test_metadata_round_trip(tmp_path):
    mean, vals, vecs, resid = make_parts(12, 4, 0.01, seed=13)
    m = gs.Model.from_arrays(mean.reshape(3, 2, 2), vals, vecs, resid, value_space="[-1,1]", source="unit test", sample_count=77)
    assert m.item_shape == (3, 2, 2)
    np.testing.assert_array_equal(m.eigvals, vals)  # float64 kept on this path
    m.save(tmp_path / "meta.safetensors")
    back = gs.Model.load(tmp_path / "meta.safetensors")
    assert back.item_shape == (3, 2, 2)
    assert back.metadata["value_space"] == "[-1,1]"
    assert back.metadata["source"] == "unit test"
    assert back.metadata["sample_count"] == "77"


def test_bad_models_and_files(tmp_path):
    mean, vals, vecs, resid = make_parts(10, 4, 0.0, seed=14)
    with pytest.raises(gs.InvalidModelError, match="non-increasing"):
        gs.Model.from_arrays(mean, vals[::-1], vecs, resid)
    with pytest.raises(gs.InvalidModelError, match="not orthogonal|norm"):
        gs.Model.from_arrays(mean, vals, vecs + 0.1, resid)
    with pytest.raises(gs.InvalidModelError, match="negative"):
        gs.Model.from_arrays(mean, vals, vecs, -1.0)
    with pytest.raises(gs.ShapeMismatchError, match=r"expected \(rank, dim\) = \(4, 10\)"):
        gs.Model.from_arrays(mean, vals, vecs.T, resid)
    with pytest.raises(gs.InvalidModelError, match="non-increasing"):  # metadata path, same check
        gs.Model.from_arrays(mean, vals[::-1], vecs, resid, value_space="[-1,1]")
    with pytest.raises(gs.FileIOError) as e:
        gs.Model.load(tmp_path / "missing.safetensors")
    assert isinstance(e.value, OSError) and "missing.safetensors" in str(e.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(gs.FileFormatError, match="junk.safetensors"):
        gs.Model.load(junk)
    model = gs.Model.from_arrays(mean, vals, vecs, resid)
    with pytest.raises(gs.FileIOError):
        model.save(tmp_path / "no" / "such" / "dir" / "m.safetensors")


def _run_isolated(tmp_path, env_extra, code):
    """Runs ``code`` with a copy of the package outside the repository, from a folder with no
    cargo target above it, so only GAUSSSKIP_LIB can lead to the library."""
    pkg = tmp_path / "site" / "gaussskip"
    shutil.copytree(Path(gs.__file__).parent, pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("GAUSSSKIP_LIB", "CARGO_TARGET_DIR")}
    env.update(PYTHONPATH=str(pkg.parent), **env_extra)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_library_not_found_message(tmp_path):
    if str(tmp_path.resolve()).startswith(str(Path(gs.library_path()).resolve().parents[2])):
        pytest.skip("the temporary folder lies inside the repository")
    code = (
        "import gaussskip as gs\n"
        "try:\n    gs.library_version()\n"
        "except gs.LibraryNotFoundError as e:\n    print('MSG', e)\n"
    )
    r = _run_isolated(tmp_path, {"GAUSSSKIP_LIB": "/nonexistent/libgaussskip.so"}, code)
    assert r.returncode == 0, r.stderr
    assert "MSG cannot find" in r.stdout
    assert "/nonexistent/libgaussskip.so" in r.stdout
    assert "cargo build --release" in r.stdout
    assert "target/release" in r.stdout


def test_library_from_environment_variable(tmp_path):
    lib = str(gs.library_path())
    code = "import gaussskip as gs, numpy as np\nprint('LIB', gs.library_path(), gs.library_version())\n"
    r = _run_isolated(tmp_path, {"GAUSSSKIP_LIB": lib}, code)
    assert r.returncode == 0, r.stderr
    assert f"LIB {lib}" in r.stdout


def test_pure_numpy_parts_work_without_the_library(tmp_path):
    code = (
        "import gaussskip as gs, numpy as np\n"
        "print('NOISE', gs.edm(2.0), gs.karras_sigmas(3)[-1])\n"
    )
    r = _run_isolated(tmp_path, {"GAUSSSKIP_LIB": "/nonexistent/libgaussskip.so"}, code)
    assert r.returncode == 0, r.stderr
    assert "NOISE Noise(alpha=1.0, sigma=2.0) 0.0" in r.stdout


# ---- byte order, in-place, layouts, levels as arrays -------------------------------------


@pytest.mark.parametrize("dtype,tol", [(">f4", F32_TOL), (">f8", F32_TOL), (">f2", F16_TOL)])
def test_big_endian_arrays_are_converted(toy, dtype, tol):
    model, ref = toy
    x = noisy(model, 5, 3.0, seed=20).astype(dtype)
    got = model.skip(x, 80.0, 2.0)
    assert got.dtype == np.dtype(dtype).newbyteorder("=") and got.dtype.isnative
    assert rel_err(got, ref.skip(x.astype(np.float64), 80.0, 2.0)) <= tol
    out = np.full(x.shape, np.nan, dtype=dtype)  # an out= in the same byte order
    assert model.skip(x, 80.0, 2.0, out=out) is out
    np.testing.assert_array_equal(out, got)


def test_out_may_be_x_itself(toy):
    model, ref = toy
    x = noisy(model, 6, 3.0, seed=21)
    want = ref.skip(x, 80.0, 1.0)
    same = x
    assert model.skip(x, 80.0, 1.0, out=x) is same
    assert rel_err(x, want) <= F32_TOL
    # In place with per-row levels and for denoise; a failed call leaves x untouched.
    y = noisy(model, 3, 3.0, seed=22)
    want = ref.denoise(y, [1.0, 2.0, 3.0])
    model.denoise(y, np.array([1.0, 2.0, 3.0]), out=y)
    assert rel_err(y, want) <= F32_TOL
    before = y.copy()
    with pytest.raises(gs.InvalidNoiseError):
        model.skip(y, 0.0, 1.0, out=y)
    np.testing.assert_array_equal(y, before)
    # A view overlapping x partially (out = x shifted by one row) is handled the same way.
    buf = noisy(model, 4, 3.0, seed=23)
    src = buf[:3]
    want = ref.skip(src, 50.0, 5.0)
    model.skip(src, 50.0, 5.0, out=buf[1:])
    assert rel_err(buf[1:], want) <= F32_TOL


def test_out_in_any_layout(toy):
    model, ref = toy
    x = noisy(model, 4, 3.0, seed=24)
    out = np.asfortranarray(np.full(x.shape, np.nan, np.float32))
    assert model.skip(x, 80.0, 1.0, out=out) is out
    assert rel_err(out, ref.skip(x, 80.0, 1.0)) <= F32_TOL
    with pytest.raises(gs.InvalidArgumentError, match="read-only"):
        ro = np.empty_like(x)
        ro.flags.writeable = False
        model.skip(x, 80.0, 1.0, out=ro)


def test_levels_as_arrays_broadcast(toy):
    model, ref = toy
    x = noisy(model, 4, 10.0, seed=25)
    rows = np.array([80.0, 40.0, 20.0, 10.0])
    want = ref.skip(x, list(rows), 1.0)
    for shaped in (rows, rows.reshape(4, 1), rows.reshape(4, 1, 1, 1), list(rows), tuple(rows)):
        assert rel_err(model.skip(x, shaped, 1.0), want) <= F32_TOL
    for one in (np.array([80.0]), np.array(80.0), np.full((1, 1, 1, 1), 80.0), [80.0], np.float32(80.0)):
        assert rel_err(model.skip(x, one, 1.0), ref.skip(x, 80.0, 1.0)) <= F32_TOL
    with pytest.raises(gs.ShapeMismatchError, match=r"one per row with shape \(batch,\)"):
        model.skip(x, np.full((2, 4), 80.0), 1.0)
    with pytest.raises(gs.ShapeMismatchError, match=r"expected 4 levels \(one per row\), got 2"):
        model.skip(x, np.array([80.0, 40.0]), 1.0)
    with pytest.raises(TypeError, match="got str"):
        model.skip(x, "80", 1.0)
    with pytest.raises(TypeError, match="got list of str"):
        model.skip(x, ["80", "40", "20", "10"], 1.0)
    with pytest.raises(gs.InvalidArgumentError, match="one source level for all rows"):
        model.skip_trajectory(x, rows, [1.0])
    traj = model.skip_trajectory(x, np.array([80.0]), np.array([[10.0], [1.0]]))
    assert traj.shape == (2, *x.shape)


# ---- pickling, copies, devices -------------------------------------------------------------


def _skip_in_worker(model, x):
    return model.skip(x, 80.0, 1.0)


def test_models_pickle_by_value(tmp_path):
    import copy
    import multiprocessing
    import pickle

    mean, vals, vecs, resid = make_parts(12, 5, 0.03, seed=26)
    vals[-1] = 0.001  # not representable in float32: must survive exactly (float64)
    m = gs.Model.from_arrays(mean.reshape(3, 4), vals, vecs, resid, value_space="[-1,1]", source="pickle test")
    back = pickle.loads(pickle.dumps(m))
    assert back is not m and (back.dim, back.rank) == (12, 5)
    np.testing.assert_array_equal(back.eigvals, m.eigvals)
    assert back.eigvals[-1] == 0.001
    np.testing.assert_array_equal(back.eigvecs, m.eigvecs)
    np.testing.assert_array_equal(back.mean, m.mean)
    assert back.residual_var == m.residual_var and back.metadata == m.metadata
    plain = gs.Model.from_arrays(mean, vals, vecs, resid)  # no metadata: none after a round trip
    assert pickle.loads(pickle.dumps(plain)).metadata == {}
    assert copy.copy(m) is m and copy.deepcopy(m) is m  # immutable
    x = noisy(m, 3, 5.0, seed=27)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(_skip_in_worker, (m, x))
    np.testing.assert_array_equal(got, m.skip(x, 80.0, 1.0))


def _libcuda_present():
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def test_prepare_and_release_arguments(toy):
    model, _ = toy
    model.prepare(64, "cpu")  # nothing to do on the CPU
    model.release("cpu")
    for bad in ("tpu", "cpu:1", "cuda:x", "cuda:-1", -1, True):
        with pytest.raises(gs.InvalidArgumentError, match="device"):
            model.prepare(8, bad)
    for bad in (0, -3, 2.5, None):
        with pytest.raises(gs.InvalidArgumentError, match="max_batch"):
            model.prepare(bad, "cpu")
    with pytest.raises(gs.InvalidArgumentError, match="max_levels"):
        model.prepare(8, "cpu", max_levels=0)
    if not _libcuda_present():
        with pytest.raises(gs.NoCudaError):
            model.prepare(8, "cuda:0")
