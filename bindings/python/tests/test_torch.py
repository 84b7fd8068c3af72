"""PyTorch tensors: CPU tensors on the host path (needs torch), CUDA tensors on the device
path (needs torch with CUDA, a GPU, and a library built with the `cuda` feature, the
default). Every test skips with the reason when one is missing.

GPU run (H100/H200), from the repository root, with the library built here:
``GAUSSSKIP_LIB=.carry/lib/libgaussskip.so PYTHONPATH=bindings/python pytest -v
bindings/python/tests/test_torch.py`` (or against an installed wheel).
"""

import os

import numpy as np
import pytest

import gaussskip as gs
from conftest import Reference, make_parts, rel_err

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")

# SPEC §5: eigenvectors stored in fp16 on the GPU with fp32 accumulation: <= 2e-3. Half or
# bfloat16 I/O adds the output rounding (2^-11, 2^-8 relative per element); the oracle runs
# on the same rounded input.
GPU_F32_TOL = 2e-3
GPU_F16_TOL = 3e-3
GPU_BF16_TOL = 8e-3


@pytest.fixture(scope="module")
def toy():
    parts = make_parts(131, 45, 0.02, seed=31)
    return gs.Model.from_arrays(*parts), Reference(*parts)


def noisy(batch, dim, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=torch.float64) * sigma


# ---- CPU tensors -----------------------------------------------------------------------


def test_cpu_tensors_match_reference(toy):
    model, ref = toy
    x = noisy(7, model.dim, 20.0, 1).to(torch.float32)
    y = model.skip(x, 80.0, 5.0)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == x.shape
    assert rel_err(y.numpy(), ref.skip(x.numpy(), 80.0, 5.0)) <= 1e-5
    x16 = x.to(torch.float16)
    y16 = model.denoise(x16, 3.0)
    assert y16.dtype == torch.float16
    assert rel_err(y16.float().numpy(), ref.denoise(x16.double().numpy(), 3.0)) <= 1e-3
    xb = x.to(torch.bfloat16)
    yb = model.skip(xb, 80.0, 5.0)
    assert yb.dtype == torch.bfloat16
    assert rel_err(yb.float().numpy(), ref.skip(xb.double().numpy(), 80.0, 5.0)) <= 8e-3
    x64 = x.double()
    y64 = model.skip(x64, 80.0, 5.0)
    assert y64.dtype == torch.float64
    assert rel_err(y64.numpy(), ref.skip(x64.numpy(), 80.0, 5.0)) <= 1e-5
    t = model.x0_trajectory(x, 80.0, [10.0, 0.0])
    assert t.shape == (2, *x.shape)
    assert rel_err(t[0].numpy(), ref.x0_along(x.numpy(), 80.0, 10.0)) <= 1e-5
    # Non-contiguous CPU tensors are copied, per-row levels may be a tensor.
    xt = noisy(model.dim, 5, 20.0, 2).to(torch.float32).t()
    levels = torch.tensor([80.0, 40.0, 20.0, 10.0, 5.0])
    assert rel_err(model.skip(xt, levels, 1.0).numpy(), ref.skip(xt.numpy(), list(levels.tolist()), 1.0)) <= 1e-5
    with pytest.raises(gs.UnsupportedDtypeError):
        model.skip(x.to(torch.int32), 80.0, 1.0)
    with pytest.raises(gs.NonFiniteError, match="non-finite"):
        model.skip(torch.full_like(x, float("nan")), 80.0, 1.0)


def dense_linear_part(ref, frm, to):
    """The matrix A of skip(x) = A x + c from the float64 oracle (columns: A e_j)."""
    eye = np.eye(ref.mean.size)
    return ref.skip(eye, frm, to) - ref.skip(np.zeros_like(eye), frm, to)


def test_autograd_backward_is_the_same_symmetric_map(toy):
    model, ref = toy
    x = noisy(3, model.dim, 20.0, 11).requires_grad_()
    frm, to = 80.0, 5.0
    y = model.skip(x, frm, to)
    assert y.requires_grad and y.grad_fn is not None
    g = noisy(3, model.dim, 1.0, 12)
    (y * g).sum().backward()
    a = dense_linear_part(ref, frm, to).T  # rows: out = x @ A^T
    np.testing.assert_allclose(a, a.T, atol=1e-12)  # symmetric, as the backward assumes
    assert rel_err(x.grad.numpy(), g.numpy() @ a.T) <= 1e-5
    # Per-row levels, denoise and both trajectories against gradcheck. The forward computes
    # in float32 and the map is affine, so finite differences are exact up to float32
    # rounding of the outputs: a large eps keeps that rounding small.
    check = dict(eps=0.5, atol=2e-4, rtol=1e-3)
    model = gs.Model.from_arrays(*make_parts(17, 6, 0.05, seed=13))  # small: gradcheck is O(dim^2)
    xs = noisy(2, model.dim, 10.0, 13).requires_grad_()
    rows = torch.tensor([80.0, 30.0])
    assert torch.autograd.gradcheck(lambda t: model.skip(t, rows, gs.vp(0.5)), (xs,), **check)
    assert torch.autograd.gradcheck(lambda t: model.denoise(t, 2.0), (xs,), **check)
    assert torch.autograd.gradcheck(lambda t: model.skip_trajectory(t, 80.0, [20.0, 1.0]), (xs,), **check)
    assert torch.autograd.gradcheck(lambda t: model.x0_trajectory(t, 80.0, [20.0, 0.0]), (xs,), **check)
    # Second derivatives: the backward is built from the same differentiable calls.
    assert torch.autograd.gradgradcheck(lambda t: model.skip(t, 80.0, 3.0), (xs,), **check)


def test_autograd_refusals_and_no_grad(toy):
    model, _ = toy
    x = noisy(2, model.dim, 5.0, 14).float().requires_grad_()
    with pytest.raises(gs.InvalidArgumentError, match="out= do not support automatic differentiation"):
        model.skip(x, 80.0, 1.0, out=torch.empty_like(x))
    sigma = torch.tensor([80.0, 40.0], requires_grad=True)
    with pytest.raises(gs.InvalidArgumentError, match="gradients with respect to noise levels"):
        model.skip(x, sigma, 1.0)
    with torch.no_grad():
        y = model.skip(x, sigma, 1.0)
    assert not y.requires_grad
    assert not model.skip(x.detach(), sigma.detach(), 1.0).requires_grad


def test_channels_last_in_channels_last_out():
    parts = make_parts(3 * 4 * 5, 20, 0.01, seed=15)
    model, ref = gs.Model.from_arrays(*parts), Reference(*parts)
    x = noisy(6, 60, 20.0, 16).float().reshape(6, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    want = ref.skip(x.double().reshape(6, -1).numpy(), 80.0, 2.0).reshape(6, 3, 4, 5)
    y = model.skip(x, 80.0, 2.0)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == x.shape
    assert rel_err(y.numpy(), want) <= 1e-5
    traj = model.skip_trajectory(x, 80.0, [2.0, 1.0])
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in traj)
    assert rel_err(traj[0].numpy(), want) <= 1e-5
    out = torch.full_like(x, float("nan"))  # channels_last, like x
    assert model.skip(x, 80.0, 2.0, out=out) is out
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out.numpy(), want) <= 1e-5
    xd = x.double().requires_grad_()  # and through autograd
    yd = model.skip(xd, 80.0, 2.0)
    assert yd.is_contiguous(memory_format=torch.channels_last)
    yd.sum().backward()
    assert xd.grad.shape == xd.shape


def test_in_place_and_sigma_tensors_broadcast(toy):
    model, ref = toy
    x = noisy(4, model.dim, 20.0, 17).float()
    x0 = x.numpy().copy()
    assert model.skip(x, 80.0, 5.0, out=x) is x
    assert rel_err(x.numpy(), ref.skip(x0, 80.0, 5.0)) <= 1e-5
    sig = torch.tensor([80.0, 40.0, 20.0, 10.0])
    want = ref.skip(x0, sig.tolist(), 1.0)
    for levels in (sig, sig[:, None, None, None], sig.reshape(4, 1), sig.double()):
        assert rel_err(model.skip(torch.from_numpy(x0), levels, 1.0).numpy(), want) <= 1e-5
    for one in (torch.tensor([80.0]), torch.tensor(80.0), torch.full((1, 1, 1, 1), 80.0)):
        assert rel_err(model.skip(torch.from_numpy(x0), one, 1.0).numpy(), ref.skip(x0, 80.0, 1.0)) <= 1e-5
    with pytest.raises(gs.ShapeMismatchError, match="expected 4 levels"):
        model.skip(torch.from_numpy(x0), sig[:3], 1.0)


class _SkipDataset(torch.utils.data.Dataset):
    """Applies a model in DataLoader workers (the model reaches them by pickling)."""

    def __init__(self, model, x):
        self.model, self.x = model, x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.model.skip(self.x[i], 80.0, 1.0)


def test_models_travel_to_dataloader_workers(toy):
    model, _ = toy
    x = noisy(4, model.dim, 20.0, 18).float()
    loader = torch.utils.data.DataLoader(
        _SkipDataset(model, x), batch_size=2, num_workers=1, multiprocessing_context="spawn"
    )
    got = torch.cat(list(loader))
    here = torch.stack([model.skip(row, 80.0, 1.0) for row in x])  # row by row, as the workers
    torch.testing.assert_close(got, here, rtol=0, atol=0)


def test_torch_compile_runs_the_call_eagerly_between_graphs(toy):
    model, ref = toy
    x = noisy(3, model.dim, 20.0, 19).float()

    def step(t):
        return model.skip(t * 2.0, 80.0, 5.0) + 1.0

    compiled = torch.compile(step, backend="eager")
    for _ in range(2):
        got = compiled(x)
        assert rel_err(got.numpy(), ref.skip(2.0 * x.double().numpy(), 80.0, 5.0) + 1.0) <= 1e-5


# ---- CUDA tensors ----------------------------------------------------------------------


def skip_or_fail(reason):
    # The GPU run sets GAUSSSKIP_REQUIRE_CUDA=1: a missing GPU is then a failure, not a skip.
    if os.environ.get("GAUSSSKIP_REQUIRE_CUDA"):
        pytest.fail(f"GAUSSSKIP_REQUIRE_CUDA is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cuda_model(toy):
    if not torch.cuda.is_available():
        skip_or_fail("no CUDA device visible to PyTorch")
    model, ref = toy
    try:
        model.skip(torch.zeros(1, model.dim, device="cuda") + 1.0, 80.0, 1.0)
    except gs.NoCudaError as e:
        skip_or_fail(f"the library has no usable CUDA backend: {e}")
    return model, ref


def to_np(t):
    return t.detach().double().cpu().numpy()


@pytest.mark.parametrize("dtype,tol", [("float32", GPU_F32_TOL), ("float16", GPU_F16_TOL), ("bfloat16", GPU_BF16_TOL)])
def test_cuda_tensors_match_reference(cuda_model, dtype, tol):
    model, ref = cuda_model
    dt = getattr(torch, dtype)
    x = noisy(33, model.dim, 30.0, 3).to("cuda", dt)
    xr = to_np(x)
    y = model.skip(x, 80.0, 19.4)
    assert y.device == x.device and y.dtype == dt and y.shape == x.shape
    torch.cuda.synchronize()
    assert rel_err(to_np(y), ref.skip(xr, 80.0, 19.4)) <= tol
    assert rel_err(to_np(model.denoise(x, 2.0)), ref.denoise(xr, 2.0)) <= tol
    frm = [gs.Noise(1.0, 80.0 - i) for i in range(33)]
    assert rel_err(to_np(model.skip(x, frm, gs.vp(0.5))), ref.skip(xr, frm, gs.vp(0.5))) <= tol
    levels = [60.0, 19.4, 1.0, 0.0]
    traj = model.skip_trajectory(x, 80.0, levels)
    x0 = model.x0_trajectory(x, 80.0, levels)
    for i, lv in enumerate(levels):
        assert rel_err(to_np(traj[i]), ref.skip(xr, 80.0, lv)) <= tol
        assert rel_err(to_np(x0[i]), ref.x0_along(xr, 80.0, lv)) <= tol


def test_cuda_out_argument_is_written_in_place(cuda_model):
    model, ref = cuda_model
    x = noisy(4, model.dim, 30.0, 4).to("cuda", torch.float32)
    out = torch.full_like(x, float("nan"))
    ptr = out.data_ptr()
    res = model.skip(x, 80.0, 5.0, out=out)
    assert res is out and out.data_ptr() == ptr
    torch.cuda.synchronize()
    assert rel_err(to_np(out), ref.skip(to_np(x), 80.0, 5.0)) <= GPU_F32_TOL


def test_cuda_layouts_dtypes_in_place_and_autograd(cuda_model):
    model, ref = cuda_model
    base = noisy(model.dim, 6, 30.0, 5).to("cuda", torch.float32)
    x = base.t()  # non-contiguous view: one device copy
    assert rel_err(to_np(model.skip(x, 80.0, 1.0)), ref.skip(to_np(x), 80.0, 1.0)) <= GPU_F32_TOL
    x64 = x.double()  # computed in float32, returned as float64
    y64 = model.skip(x64, 80.0, 1.0)
    assert y64.dtype == torch.float64 and rel_err(to_np(y64), ref.skip(to_np(x64), 80.0, 1.0)) <= GPU_F32_TOL
    xc = x.contiguous()
    want = ref.skip(to_np(xc), 80.0, 1.0)
    assert model.skip(xc, 80.0, 1.0, out=xc) is xc  # in place
    torch.cuda.synchronize()
    assert rel_err(to_np(xc), want) <= GPU_F32_TOL
    with pytest.raises(gs.InvalidNoiseError, match="sigma > 0"):
        model.skip(torch.zeros(2, model.dim, device="cuda"), 0.0, 1.0)
    xg = noisy(3, model.dim, 20.0, 6).to("cuda", torch.float32).requires_grad_()
    g = noisy(3, model.dim, 1.0, 7).to("cuda", torch.float32)
    (model.skip(xg, 80.0, 5.0) * g).sum().backward()
    want_grad = model.skip(g.cpu(), 80.0, 5.0) - model.skip(torch.zeros_like(g.cpu()), 80.0, 5.0)
    assert rel_err(to_np(xg.grad), want_grad.double().numpy()) <= GPU_F32_TOL


def test_cuda_channels_last(cuda_model):
    parts = make_parts(3 * 4 * 5, 20, 0.01, seed=40)
    model, ref = gs.Model.from_arrays(*parts), Reference(*parts)
    x = noisy(6, 60, 20.0, 41).to("cuda", torch.float16).reshape(6, 3, 4, 5)
    x = x.contiguous(memory_format=torch.channels_last)
    y = model.skip(x, 80.0, 2.0)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.float16
    torch.cuda.synchronize()
    assert rel_err(to_np(y).reshape(6, -1), ref.skip(to_np(x).reshape(6, -1), 80.0, 2.0)) <= GPU_F16_TOL


def test_cuda_on_a_non_default_stream(cuda_model):
    model, ref = cuda_model
    base = noisy(64, model.dim, 30.0, 6).to("cuda", torch.float32)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        # The input is produced on s and the call is queued on s after it: stream order
        # alone makes the result correct, without a synchronisation in between.
        x = base * 2.0
        y = model.skip(x, 80.0, 10.0)
        z = y + 0.0
    s.synchronize()
    assert rel_err(to_np(z), ref.skip(2.0 * to_np(base), 80.0, 10.0)) <= GPU_F32_TOL


def test_cuda_graph_capture_after_prepare(cuda_model):
    _, ref = cuda_model
    model = gs.Model.from_arrays(ref.mean, ref.vals, ref.vecs, ref.resid)  # never used on CUDA
    static_x = noisy(16, model.dim, 80.0, 7).to("cuda", torch.float32)
    static_out = torch.empty_like(static_x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        model.prepare(16, "cuda")  # uploads: the first call can be captured
    s.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        model.skip(static_x, 80.0, 19.4, out=static_out)
    for seed in (8, 9):
        new = noisy(16, model.dim, 80.0, seed).to("cuda", torch.float32)
        static_x.copy_(new)
        static_out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert rel_err(to_np(static_out), ref.skip(to_np(new), 80.0, 19.4)) <= GPU_F32_TOL


def test_cuda_graph_capture_the_pytorch_way_without_prepare(cuda_model):
    # PyTorch's documented recipe: warm up on a side stream, then capture. The warm-up call
    # uploads the model; the captured call's scratch becomes the graph's own memory.
    _, ref = cuda_model
    model = gs.Model.from_arrays(ref.mean, ref.vals, ref.vecs, ref.resid)  # never used on CUDA
    static_x = noisy(16, model.dim, 80.0, 10).to("cuda", torch.float32)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model.skip(static_x, 80.0, 19.4)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = model.skip(static_x, 80.0, 19.4)
    big = noisy(512, model.dim, 80.0, 11).to("cuda", torch.float32)
    for seed in (12, 13):
        new = noisy(16, model.dim, 80.0, seed).to("cuda", torch.float32)
        static_x.copy_(new)
        g.replay()
        model.skip(big, 80.0, 5.0)  # a larger eager call between replays
        torch.cuda.synchronize()
        assert rel_err(to_np(static_out), ref.skip(to_np(new), 80.0, 19.4)) <= GPU_F32_TOL


def test_cuda_two_streams_at_once(cuda_model):
    model, ref = cuda_model
    xs = [noisy(48, model.dim, 30.0, 20 + i).to("cuda", torch.float32) for i in range(2)]
    outs = [torch.full_like(x, float("nan")) for x in xs]
    streams = [torch.cuda.Stream() for _ in xs]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    for _ in range(5):  # interleaved calls on both streams, no synchronisation in between
        for x, out, s in zip(xs, outs, streams):
            with torch.cuda.stream(s):
                model.skip(x, 80.0, 10.0, out=out)
    torch.cuda.synchronize()
    for x, out in zip(xs, outs):
        assert rel_err(to_np(out), ref.skip(to_np(x), 80.0, 10.0)) <= GPU_F32_TOL


def test_cuda_torch_compile_reduce_overhead(cuda_model):
    model, ref = cuda_model
    model.prepare(16, "cuda")

    def step(t):
        return model.skip(t * 2.0, 80.0, 19.4) + 1.0

    compiled = torch.compile(step, mode="reduce-overhead")
    for seed in (30, 31, 32):
        x = noisy(16, model.dim, 20.0, seed).to("cuda", torch.float32)
        got = compiled(x)
        torch.cuda.synchronize()
        assert rel_err(to_np(got), ref.skip(2.0 * to_np(x), 80.0, 19.4) + 1.0) <= GPU_F32_TOL


def sample_heun(denoiser, x, sigmas):
    """k-diffusion's deterministic Heun sampler on tensors; returns (x, NFE)."""
    nfe = 0
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoiser(x, s)) / s
        nfe += 1
        if s_next == 0:
            x = x + d * (s_next - s)
        else:
            x2 = x + d * (s_next - s)
            d2 = (x2 - denoiser(x2, s_next)) / s_next
            nfe += 1
            x = x + (d + d2) / 2 * (s_next - s)
    return x, nfe


def test_kdiffusion_loop_with_the_first_steps_replaced_by_the_jump(cuda_model):
    model, ref = cuda_model
    sigmas = torch.tensor(gs.karras_sigmas(18, 0.002, 80.0), dtype=torch.float64)
    x_T = noisy(32, model.dim, 80.0, 10).to("cuda", torch.float32)
    exact = ref.skip(to_np(x_T), 80.0, 0.0)
    full, nfe_full = sample_heun(model.denoise, x_T, sigmas)
    x, rest = gs.kdiffusion_skip(model, x_T, sigmas, 4)
    assert rel_err(to_np(x), ref.skip(to_np(x_T), 80.0, float(sigmas[4]))) <= GPU_F32_TOL
    out, nfe_skip = sample_heun(model.denoise, x, rest)
    torch.cuda.synchronize()
    assert (nfe_full, nfe_skip) == (35, 27)
    err_full, err_skip = rel_err(to_np(full), exact), rel_err(to_np(out), exact)
    # Both are Heun's discretisation error of the late steps plus fp16-eigenvector rounding.
    assert err_skip <= err_full + GPU_F32_TOL, (err_full, err_skip)
