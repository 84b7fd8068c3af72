"""Models of several components (one Gaussian per class): component= on every operation,
components out and back in, labels, pickling, files and bad indices."""

import pickle

import numpy as np
import pytest

import gaussskip as gs
from conftest import Reference, make_parts, rel_err

F32_TOL = 1e-5


@pytest.fixture
def three(tmp_path):
    parts, refs = [], []
    for seed, (rank, resid) in enumerate([(12, 0.0), (5, 0.05), (1, 0.2)]):
        m, v, e, r = make_parts(12, rank, resid, seed + 40)
        parts.append(gs.Model.from_arrays(m, v, e, r, sample_count=10 * (seed + 1)))
        refs.append(Reference(m, v, e, r))
    return gs.Model.from_components(parts, ["cat", "dog", "owl"]), refs


def noisy_rows(n, seed, scale=5.0):
    return np.random.default_rng(seed).standard_normal((n, 12)).astype(np.float32) * scale


def test_each_row_uses_its_component(three):
    model, refs = three
    comp = np.array([2, 0, 1, 1, 0, 2, 0])
    x = noisy_rows(len(comp), 1)
    out = model.skip(x, 40.0, 2.0, component=comp)
    for i, c in enumerate(comp):
        assert rel_err(out[i], refs[c].skip(x[i : i + 1], 40.0, 2.0)[0]) <= F32_TOL
    den = model.denoise(x, [3.0 + i for i in range(len(comp))], component=comp.tolist())
    for i, c in enumerate(comp):
        assert rel_err(den[i], refs[c].denoise(x[i : i + 1], 3.0 + i)[0]) <= F32_TOL
    traj = model.x0_trajectory(x, 30.0, [10.0, 1.0], component=comp)
    for i, c in enumerate(comp):
        one = model.component(int(c)).x0_trajectory(x[i : i + 1], 30.0, [10.0, 1.0])
        np.testing.assert_allclose(traj[:, i], one[:, 0], rtol=1e-6, atol=1e-6)
    st = model.skip_trajectory(x, 30.0, [10.0, 1.0], component=comp)
    for i, c in enumerate(comp):
        one = model.component(int(c)).skip_trajectory(x[i : i + 1], 30.0, [10.0, 1.0])
        np.testing.assert_allclose(st[:, i], one[:, 0], rtol=1e-6, atol=1e-6)


def test_one_index_or_label_for_all_rows_and_the_default(three):
    model, refs = three
    x = noisy_rows(4, 2)
    np.testing.assert_array_equal(model.skip(x, 20.0, 1.0, component=1), model.skip(x, 20.0, 1.0, component="dog"))
    np.testing.assert_array_equal(model.skip(x, 20.0, 1.0, component=["dog"] * 4), model.skip(x, 20.0, 1.0, component=1))
    assert rel_err(model.skip(x, 20.0, 1.0), refs[0].skip(x, 20.0, 1.0)) <= F32_TOL


def test_components_out_and_in(three):
    model, refs = three
    assert model.n_components == 3 and model.labels == ["cat", "dog", "owl"] and model.counts == [10, 20, 30]
    dog = model.component("dog")
    assert dog.n_components == 1 and dog.labels == ["dog"] and dog.rank == 5
    np.testing.assert_array_equal(dog.eigvals, np.asarray(refs[1].vals))
    assert "n_components=3" in repr(model)


def test_files_and_pickles_keep_every_component(three, tmp_path):
    model, _ = three
    x = noisy_rows(3, 3)
    comp = [2, 1, 0]
    want = model.skip(x, 9.0, 0.5, component=comp)
    path = tmp_path / "m.safetensors"
    model.save(path)
    for back in (gs.Model.load(path), pickle.loads(pickle.dumps(model))):
        assert back.labels == model.labels and back.counts == model.counts
        np.testing.assert_array_equal(back.skip(x, 9.0, 0.5, component=comp), want)


def test_bad_components_are_refused_and_out_untouched(three):
    model, _ = three
    x = noisy_rows(3, 4)
    out = np.full_like(x, 7.0)
    with pytest.raises(gs.InvalidArgumentError, match="out of range"):
        model.skip(x, 9.0, 0.5, component=[0, 3, 1], out=out)
    with pytest.raises(gs.ShapeMismatchError, match="one per row"):
        model.skip(x, 9.0, 0.5, component=[0, 1], out=out)
    with pytest.raises(gs.InvalidArgumentError, match="labelled 'bat'"):
        model.skip(x, 9.0, 0.5, component=["cat", "bat", "owl"], out=out)
    with pytest.raises(gs.InvalidArgumentError, match="integer"):
        model.skip(x, 9.0, 0.5, component=np.array([0.5, 1.0, 2.0]), out=out)
    with pytest.raises(gs.InvalidArgumentError, match="out of range"):
        model.component(5)
    assert (out == 7.0).all()
    with pytest.raises(gs.InvalidArgumentError, match="used by two"):
        gs.Model.from_components([model.component(0), model.component(1)], ["a", "a"])


def test_torch_tensors_and_gradients_follow_the_components(three):
    torch = pytest.importorskip("torch")
    model, refs = three
    comp = torch.tensor([1, 0, 2])
    x = torch.from_numpy(noisy_rows(3, 5)).requires_grad_(True)
    out = model.skip(x, 15.0, 1.5, component=comp)
    for i, c in enumerate(comp.tolist()):
        assert rel_err(out[i].detach().numpy(), refs[c].skip(x[i : i + 1].detach().numpy(), 15.0, 1.5)[0]) <= F32_TOL
    out.sum().backward()
    # The gradient of row i is the linear part of its component applied to ones.
    for i, c in enumerate(comp.tolist()):
        lin = model.component(c)._linear_part()
        g = lin.skip(np.ones((1, 12), np.float32), 15.0, 1.5)[0]
        np.testing.assert_allclose(x.grad[i].numpy(), g, rtol=1e-5, atol=1e-6)
