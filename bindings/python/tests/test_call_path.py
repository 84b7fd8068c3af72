"""The short path of the common call (a C-contiguous array in a library dtype, plain-number
levels) against the general path: same results bit for bit, the same overlap handling at
the byte boundaries, the same errors. The timing is in scripts/py_overhead.py."""

import numpy as np
import pytest

import gaussskip as gs
from conftest import make_parts, rel_err
from gaussskip import _arrays

F32_TOL = 1e-5


@pytest.fixture(scope="module")
def small():
    return gs.Model.from_arrays(*make_parts(12, 5, 0.03, seed=41))


def rows(model, batch, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, model.dim)) * 4.0).astype(dtype)


def test_data_address_matches_numpy():
    base = np.arange(40, dtype=np.float32).reshape(4, 10)
    ro = base.copy()
    ro.flags.writeable = False
    for arr in (
        base,
        base[1:],  # a view at an offset
        base[:, 3:],  # non-contiguous
        base[::-1],  # negative strides: the address of the first element
        base.astype(np.float16),
        np.empty((0, 10), np.float32),
        ro,
        base.view(np.recarray),  # a subclass
    ):
        assert _arrays.address(arr) == arr.ctypes.data


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_short_path_equals_the_general_path(small, dtype):
    # A Fortran-ordered x takes the general path (one copy); the result must be the same bits.
    x = rows(small, 6, seed=1, dtype=dtype)
    xf = np.asfortranarray(x)
    per_row = np.linspace(80.0, 5.0, 6)
    for call in (
        lambda a, **k: small.skip(a, 80.0, 19.4, **k),
        lambda a, **k: small.skip(a, np.float64(80.0), 19, **k),
        lambda a, **k: small.skip(a, per_row, 0.5, **k),
        lambda a, **k: small.denoise(a, 19.4, **k),
        lambda a, **k: small.denoise(a, per_row.astype(np.float32), **k),
    ):
        want = call(xf)
        got = call(x)
        assert got.dtype == x.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
        out = np.full_like(x, np.nan)
        assert call(x, out=out) is out
        np.testing.assert_array_equal(out, want)


def test_plain_number_levels_read_as_before(small):
    x = rows(small, 3, seed=2)
    want = small.skip(x, gs.edm(80.0), gs.edm(2.0))
    for frm, to in ((80, 2), (80.0, 2.0), (np.float64(80.0), np.float32(2.0)), (np.int64(80), True + 1)):
        np.testing.assert_array_equal(small.skip(x, frm, to), want)
    with pytest.raises(OverflowError):
        small.skip(x, 10**400, 1.0)
    out = np.full_like(x, 7.0)
    with pytest.raises(gs.InvalidNoiseError):
        small.skip(x, float("nan"), 1.0, out=out)
    np.testing.assert_array_equal(out, 7.0)
    # as_levels keeps returning Noise objects (public API), also for arrays.
    assert gs.noise.as_levels(np.array([1.0, 2.0]), "at") == [gs.Noise(1.0, 1.0), gs.Noise(1.0, 2.0)]


def test_per_row_level_tables(small):
    x = rows(small, 4, seed=3)
    frm = [gs.vp(0.1), 40.0, gs.flow(0.8), np.float32(3.0)]
    want = np.stack([small.skip(x[i : i + 1], frm[i], 1.5)[0] for i in range(4)])
    assert rel_err(small.skip(x, frm, 1.5), want.astype(np.float64)) <= 1e-6
    # 1-D float arrays of any precision read as the same list of Python floats.
    for dtype in (np.float16, np.float32, np.float64):
        sigmas = np.array([0.5, 3.0, 20.0, 70.0], dtype)
        listed = [float(v) for v in sigmas]
        np.testing.assert_array_equal(small.denoise(x, sigmas), small.denoise(x, listed))
        np.testing.assert_array_equal(small.skip(x, 80.0, sigmas), small.skip(x, 80.0, listed))
    with pytest.raises(gs.ShapeMismatchError, match=r"`to` has the wrong size: expected 4 levels \(one per row\), got 3"):
        small.skip(x, 80.0, [1.0, 2.0, 3.0])
    with pytest.raises(gs.ShapeMismatchError, match=r"`at` has the wrong size: expected 4 levels \(one per row\), got 2"):
        small.denoise(x, [gs.edm(1.0), gs.edm(2.0)])


def test_overlap_found_at_one_element_either_side(small):
    # out sharing only the last element of x, or only the first: the call must still see the
    # overlap (the library refuses overlapping buffers) and work through a copy of x.
    n = 3 * small.dim
    for x_at, out_at in ((0, n - 1), (n - 1, 0)):
        flat = rows(small, 7, seed=4).reshape(-1)[: 2 * n]
        x = flat[x_at : x_at + n].reshape(3, small.dim)
        want = small.skip(x.copy(), 80.0, 1.0)
        out = flat[out_at : out_at + n].reshape(3, small.dim)
        assert small.skip(x, 80.0, 1.0, out=out) is out
        np.testing.assert_array_equal(out, want)
    # One shared byte: an out= that is not aligned (the library reads and writes any address).
    raw = np.zeros(8 * n, np.uint8)
    x = raw[: 4 * n].view(np.float32).reshape(3, small.dim)
    x[...] = rows(small, 3, seed=9)
    want = small.skip(x.copy(), 80.0, 1.0)
    out = raw[4 * n - 1 : 8 * n - 1].view(np.float32).reshape(3, small.dim)
    assert small.skip(x, 80.0, 1.0, out=out) is out
    np.testing.assert_array_equal(out, want)
    # Side by side without a shared byte: written directly, x untouched.
    flat = rows(small, 6, seed=5).reshape(-1)
    x, out = flat[:n].reshape(3, small.dim), flat[n:].reshape(3, small.dim)
    before = x.copy()
    small.skip(x, 80.0, 1.0, out=out)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(out, small.skip(before, 80.0, 1.0))


def test_outputs_the_short_path_passes_on(small):
    x = rows(small, 2, seed=6)
    want = small.skip(x, 80.0, 1.0)
    # Each out= below leaves the short path: the general path's handling (or error) applies.
    sub = np.full_like(x, np.nan).view(np.recarray)
    assert small.skip(x, 80.0, 1.0, out=sub) is sub
    np.testing.assert_array_equal(np.asarray(sub), want)
    swapped = np.full(x.shape, np.nan, x.dtype.newbyteorder())
    small.skip(x, 80.0, 1.0, out=swapped)
    np.testing.assert_array_equal(swapped, want)
    ro = np.zeros_like(x)
    ro.flags.writeable = False
    with pytest.raises(gs.InvalidArgumentError, match="read-only"):
        small.skip(x, 80.0, 1.0, out=ro)
    with pytest.raises(gs.ShapeMismatchError, match="`out` has the wrong size"):
        small.skip(x, 80.0, 1.0, out=np.empty((3, small.dim), np.float32))
    with pytest.raises(gs.ShapeMismatchError, match="`out` has the wrong size"):
        small.skip(x, 80.0, 1.0, out=np.empty(x.shape, np.float16))
    with pytest.raises(gs.InvalidArgumentError, match="expected a NumPy array"):
        small.skip(x, 80.0, 1.0, out=[0.0] * x.size)
    with pytest.raises(gs.ShapeMismatchError, match="`x` has the wrong size"):
        small.skip(np.zeros((2, small.dim + 1), np.float32), 80.0, 1.0)


def test_torch_cpu_short_path(small):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    x = torch.from_numpy(rows(small, 3, seed=7))
    want = small.skip(x.numpy(), 80.0, 1.0)
    got = small.skip(x, 80.0, 1.0)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), want)
    # A transposed layout takes the general path: same bits.
    xt = x.t().contiguous().t()
    np.testing.assert_array_equal(small.skip(xt, 80.0, 1.0).numpy(), want)
    # out= overlapping x by one element either side; out=x.
    n = 3 * small.dim
    for x_at, out_at in ((0, n - 1), (n - 1, 0)):
        flat = torch.from_numpy(rows(small, 7, seed=8).reshape(-1)[: 2 * n].copy())
        xv = flat[x_at : x_at + n].view(3, small.dim)
        ref = small.skip(xv.numpy().copy(), 80.0, 1.0)
        out = flat[out_at : out_at + n].view(3, small.dim)
        assert small.skip(xv, 80.0, 1.0, out=out) is out
        np.testing.assert_array_equal(out.numpy(), ref)
    # A parameter (a tensor subclass) in, a plain tensor out, as before.
    got = small.skip(torch.nn.Parameter(x.clone(), requires_grad=False), 80.0, 1.0)
    assert type(got) is torch.Tensor
    np.testing.assert_array_equal(got.numpy(), want)
    y = x.clone()
    assert small.skip(y, 80.0, 1.0, out=y) is y
    np.testing.assert_array_equal(y.numpy(), want)
    with pytest.raises(gs.ShapeMismatchError, match="`out` has the wrong size"):
        small.skip(x, 80.0, 1.0, out=torch.empty(3, small.dim, dtype=torch.float16))


def test_per_row_levels_are_read_once(small):
    # The backward of an autograd call runs the same library call later: it must use the
    # levels as they were at the call, even if the caller's tensor changed in between.
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    x = torch.from_numpy(rows(small, 3, seed=10).astype(np.float64))
    at = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    want_x = x.clone().requires_grad_(True)
    small.denoise(want_x, at.clone()).sum().backward()
    got_x = x.clone().requires_grad_(True)
    y = small.denoise(got_x, at)
    at.mul_(10.0)
    y.sum().backward()
    np.testing.assert_array_equal(got_x.grad.numpy(), want_x.grad.numpy())
