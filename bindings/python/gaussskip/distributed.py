"""Fitting across processes and machines with ``torch.distributed`` (``torchrun``,
``accelerate``, ...): every rank streams its own share of the data into the library's
accumulator, and the statistics are combined with collectives.

    import torch.distributed as dist
    import gaussskip.distributed

    dist.init_process_group("nccl")            # under torchrun; "gloo" on CPUs
    model = gaussskip.distributed.fit(loader, rank=256, method="sketch")
    if dist.get_rank() == 0:
        model.save("latents.safetensors")

How the states combine. Each rank's accumulator holds its count n_r, mean m_r and the
scatter about that mean (M2_r for :class:`~gaussskip.Moments`, Y_r = M2_r W and the trace
for a :class:`~gaussskip.Sketch` over the test matrix W). Sums about a common shift add:
rank 0 broadcasts the shift mu (the count-weighted mean of all ranks, from an all-reduce of
(n_r, n_r m_r)), each rank moves its scatter to that shift (M2_r + n_r d_r d_r^T with
d_r = m_r - mu), and one all-reduce of these float64 sums gives the scatter of all the data
(the parallel-axis form of Chan et al.'s merge, which the library uses between batches).
Every rank then holds the same state; rank 0 fits the model and broadcasts it.

A multi-pass sketch reads the data once per pass: each pass every rank streams its share
again, the sums are combined, rank 0 starts the next pass from the combined state (its new
test matrix is the orthonormalised combined Y) and broadcasts that state, so every rank
sketches with the very same test matrix.

Faults. Before every collective the ranks exchange a status on a CPU (gloo) group: a rank
whose batches raise (NaN or Inf, a reader error, any exception) reports it, and every rank
raises :class:`RankFailedError` naming it instead of waiting in a collective. A rank that
hangs or dies is caught by ``timeout`` (``torch.distributed.monitored_barrier``; rank 0's
error names the ranks that did not arrive). With uneven shards the fastest rank waits for
the slowest at the end of a pass, so ``timeout`` must exceed that difference.
"""

import datetime
import json
import math
import re
import struct
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from . import _safetensors
from .errors import DatasetError, GaussSkipError, InvalidArgumentError, ShapeMismatchError
from .fit import Moments, Sketch, _choose, _cuda_ordinal, _is_torch, _take_x
from .model import Model

__all__ = ["RankFailedError", "combine", "fit"]

# The library's exported moments state (src/fit/state.rs): tensors mean [dim] and
# scatter [dim, dim] in float64, metadata format, format_version and count.
_MOMENTS_META = {"format": "gaussskip-moments", "format_version": "1"}


class RankFailedError(GaussSkipError, RuntimeError):
    """A rank of a distributed fit failed, stopped answering or left the group; raised on
    every rank.

    Attributes:
        ranks: the global ranks that failed (empty when unknown, e.g. after a timeout seen
            by a rank other than 0).
        step: what the ranks were doing.
    """

    def __init__(self, message: str, ranks: Tuple[int, ...] = (), step: str = ""):
        super().__init__(message)
        self.ranks = tuple(ranks)
        self.step = step


def _ranks_text(ranks) -> str:
    """'rank 2' or 'ranks 1, 2'."""
    return ("ranks " if len(ranks) > 1 else "rank ") + ", ".join(map(str, ranks))


class _Group:
    """The process group of a fit: its collectives, the device they need, and the status
    exchange that precedes each of them."""

    def __init__(self, group, timeout: Optional[float]):
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise InvalidArgumentError(
                "invalid argument `group`: torch.distributed is not initialised; call "
                "torch.distributed.init_process_group first (torchrun sets up its environment)",
                2,
            )
        if timeout is not None and not timeout > 0:
            raise InvalidArgumentError(f"invalid argument `timeout`: must be > 0 seconds, got {timeout!r}", 2)
        self.dist = dist
        self.group = group
        self.size = dist.get_world_size(group)
        self.index = dist.get_rank(group)
        self.me = dist.get_rank()
        backend = str(dist.get_backend(group)).lower()
        # NCCL reduces tensors on the GPU this process drives; gloo on the host.
        self.device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else torch.device("cpu")
        self.timeout = None if timeout is None else datetime.timedelta(seconds=float(timeout))
        if backend == "gloo":
            self.status_group = group
        else:
            # Statuses go over a CPU group: monitored_barrier (which names missing ranks)
            # needs gloo, and small objects need no device round trip.
            self.status_group = dist.new_group(
                ranks=dist.get_process_group_ranks(group if group is not None else dist.group.WORLD),
                backend="gloo",
                timeout=self.timeout,
                use_local_synchronization=True,
            )

    def __enter__(self) -> "_Group":
        return self

    def __exit__(self, *exc) -> None:
        if self.status_group is not self.group:
            self.dist.destroy_process_group(self.status_group)

    def exchange(self, step: str, error: Optional[BaseException], payload: Any) -> List[Any]:
        """Every rank's payload, once every rank has reached ``step``; raises
        :class:`RankFailedError` on every rank when one of them reports an error."""
        dist = self.dist
        try:
            dist.monitored_barrier(group=self.status_group, timeout=self.timeout, wait_all_ranks=True)
            reports: List[Any] = [None] * self.size
            mine = (self.me, None if error is None else f"{type(error).__name__}: {error}", payload)
            dist.all_gather_object(reports, mine, group=self.status_group)
        except RuntimeError as e:
            # Rank 0's monitored_barrier names the ranks that did not arrive; the others only
            # see that rank 0 gave up.
            late = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(e))
            ranks = tuple(int(r) for r in late.group(1).replace(",", " ").split()) if late else ()
            who = _ranks_text(ranks) if ranks else "a rank"
            raise RankFailedError(
                f"distributed fit: {who} did not reach {step} in time (hung, died or left the group); rank "
                f"{self.me} stops waiting{'' if ranks else ' (rank 0 names the ranks that did not arrive)'}. {e}",
                ranks=ranks,
                step=step,
            ) from error or e
        failed = [(r, msg) for r, msg, _ in reports if msg is not None]
        if failed:
            ranks = tuple(r for r, _ in failed)
            who = "every rank" if len(failed) == self.size else _ranks_text(ranks)
            detail = "; ".join(f"rank {r}: {msg}" for r, msg in failed)
            raise RankFailedError(
                f"distributed fit: {who} of {self.size} failed at {step}; every rank stops. {detail}",
                ranks=ranks,
                step=step,
            ) from error
        return [p for _, _, p in reports]

    def _guarded(self, step: str, fn: Callable[[], Any], share: bool) -> Tuple[Any, List[Any]]:
        try:
            result, error = fn(), None
        except Exception as e:  # any failure is reported to the other ranks, then raised
            result, error = None, e
        return result, self.exchange(step, error, result if share else None)

    def run(self, step: str, fn: Callable[[], Any]) -> Any:
        """Runs ``fn`` here and returns its result once every rank has run its own without
        error (only statuses travel)."""
        return self._guarded(step, fn, share=False)[0]

    def gather(self, step: str, fn: Callable[[], Any]) -> List[Any]:
        """Every rank's (small, picklable) result of ``fn``, in group order."""
        return self._guarded(step, fn, share=True)[1]

    def collective(self, step: str, fn: Callable[[], Any]) -> Any:
        """A data collective; a rank that dies inside it makes it raise (or time out)."""
        try:
            return fn()
        except RuntimeError as e:
            raise RankFailedError(f"distributed fit: a collective failed at {step}: {e}", step=step) from e

    def all_reduce(self, step: str, t):
        """Sums ``t`` (float64) over the ranks, in place, on the group's device."""
        dist = self.dist
        on = t.to(self.device)
        self.collective(step, lambda: dist.all_reduce(on, op=dist.ReduceOp.SUM, group=self.group))
        return on.cpu() if on is not t else t

    def broadcast(self, step: str, t):
        """Rank 0's ``t`` on every rank."""
        dist = self.dist
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        on = t.to(self.device)
        self.collective(step, lambda: dist.broadcast(on, src=src, group=self.group))
        return on.cpu() if on is not t else t

    def broadcast_object(self, step: str, obj: Any) -> Any:
        """Rank 0's ``obj`` (pickled) on every rank."""
        dist = self.dist
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        box = [obj]
        self.collective(step, lambda: dist.broadcast_object_list(box, src=src, group=self.group, device=self.device))
        return box[0]


def _read_image(image: bytes) -> Tuple[Dict[str, str], Dict[str, np.ndarray]]:
    """Metadata and float64 tensors of a state image the library exported (a safetensors
    image)."""
    (n,) = struct.unpack_from("<Q", image, 0)
    header = json.loads(image[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, h in header.items():
        if h["dtype"] != "F64":
            raise GaussSkipError(f"state tensor {name} is {h['dtype']}, expected F64")
        shape = tuple(h["shape"])
        start = 8 + n + h["data_offsets"][0]
        tensors[name] = np.frombuffer(image, "<f8", count=math.prod(shape), offset=start).reshape(shape)
    return meta, tensors


def _shift(g: _Group, count: int, mean: np.ndarray) -> Tuple[int, np.ndarray]:
    """The total count and the common shift: the count-weighted mean of all ranks, as rank
    0 computed it."""
    import torch

    v = torch.zeros(mean.size + 1, dtype=torch.float64)
    v[0] = float(count)
    if count:
        v[1:] = torch.from_numpy(mean * float(count))
    v = g.all_reduce("the all-reduce of counts and means", v)
    total = int(v[0].item())
    mu = v[1:] / max(total, 1)
    mu = g.broadcast("the broadcast of the shift", mu)
    return total, mu.numpy()


def _combined_mean(g: _Group, total: int, mu: np.ndarray, s1) -> np.ndarray:
    """mu + (sum over ranks of n_r d_r) / N. The scatter's own second-order term, -s1 s1^T / N,
    is dropped: mu is the weighted mean, so s1 is rounding (about eps N |mu|) and the term
    is eps^2 |mu|^2 / var relative to the scatter."""
    s1 = g.all_reduce("the all-reduce of the shifted sums", s1)
    return mu + s1.numpy() / total


def _combine_moments(g: _Group, local: Moments, item_shape: Tuple[int, ...]) -> Moments:
    """Every rank's moments combined, the same on every rank."""
    import torch

    count = local.count
    mean = local.mean if count else np.zeros(math.prod(item_shape))
    total, mu = _shift(g, count, mean)
    if total == 0:
        raise DatasetError("dataset: no rows on any rank", 13)

    def shifted():
        s2 = torch.from_numpy(local.m2) if count else torch.zeros((mean.size, mean.size), dtype=torch.float64)
        d = torch.from_numpy(mean - mu)
        if count:
            s2.addr_(d, d, alpha=float(count))
        return s2, d * float(count)

    s2, s1 = g.run("moving the moments to the common shift", shifted)
    s2 = g.all_reduce("the all-reduce of the scatter matrices", s2)
    combined_mean = _combined_mean(g, total, mu, s1)

    def load():
        meta = dict(_MOMENTS_META, count=str(total))
        image = _safetensors.serialize({"mean": combined_mean, "scatter": s2.numpy()}, meta)
        return Moments.from_bytes(image, item_shape)

    return g.run("loading the combined moments", load)


# What sketches must share to be combined (their test matrix is identified by test_id).
_PLAN = ("dim", "rank", "width", "passes", "seed", "pass", "test_id")


def _combine_sketch(g: _Group, local: Sketch) -> Sketch:
    """Every rank's sketch of this pass combined, the same on every rank."""
    import torch

    kept = {}

    def export():
        kept["image"] = local.to_bytes()
        kept["meta"], kept["tensors"] = _read_image(kept["image"])
        return {k: kept["meta"][k] for k in _PLAN}

    plans = g.gather("exporting the sketch", export)
    if any(p != plans[0] for p in plans):
        raise InvalidArgumentError(
            "invalid argument `sketch`: the ranks' sketches differ in plan, pass or test matrix (same rank, "
            "oversampling, passes and seed on every rank; a later pass from the state the previous one ended with): "
            + "; ".join(f"rank {r}: {p}" for r, p in enumerate(plans)),
            2,
        )
    meta, tensors = kept["meta"], kept["tensors"]
    count = int(meta["count"])
    mean, y, trace = tensors["mean"], tensors["y"], float(meta["trace"])
    total, mu = _shift(g, count, mean)
    if total == 0:
        raise DatasetError("dataset: no rows on any rank", 13)

    def shifted():
        """(Y_r + n_r d_r d_r^T W, trace_r + n_r |d_r|^2, n_r d_r) as one vector. The library
        holds W (pass 1 regenerates it from the seed), so it forms the term: the two items
        +a and -a with a = sqrt(n_r / 2) d_r have mean 0 and scatter n_r d_r d_r^T."""
        flat = np.empty(y.size + 1 + mean.size)
        flat[: y.size] = y.reshape(-1)
        flat[y.size] = trace
        d = mean - mu
        flat[y.size + 1 :] = d * count
        if count:
            a = math.sqrt(count / 2.0) * d
            pair = local.empty_like().update(np.stack([a, -a]).reshape((2,) + tuple(local.item_shape)))
            pmeta, ptensors = _read_image(pair.to_bytes())
            flat[: y.size] += ptensors["y"].reshape(-1)
            flat[y.size] += float(pmeta["trace"])
        return torch.from_numpy(flat)

    flat = g.run("moving the sketch to the common shift", shifted)
    flat = g.all_reduce("the all-reduce of the sketches", flat).numpy()
    combined_mean = _combined_mean(g, total, mu, torch.from_numpy(flat[y.size + 1 :].copy()))

    def load():
        out_meta = dict(meta, count=str(total), trace=repr(float(flat[y.size])))
        out = dict(tensors, mean=combined_mean, y=flat[: y.size].reshape(y.shape))
        return Sketch.from_bytes(_safetensors.serialize(out, out_meta), local.item_shape)

    return g.run("loading the combined sketch", load)


def combine(acc: Union[Moments, Sketch], *, group=None, timeout: Optional[float] = None) -> Union[Moments, Sketch]:
    """Combines the accumulator each rank filled with its share of the data: the same
    :class:`~gaussskip.Moments` or :class:`~gaussskip.Sketch` on every rank, as if one
    process had added all the data (for a loop of one's own; :func:`fit` does it all).

    Call it on every rank of ``group``. Moments: any. Sketches: the same plan (rank,
    oversampling, passes, seed) and pass on every rank; for a later pass, every rank must
    start from the same state (rank 0's ``next_pass()`` state, broadcast). A rank that saw
    no data passes an empty accumulator of the same kind. ``timeout``: as for :func:`fit`.
    """
    if not isinstance(acc, (Moments, Sketch)):
        raise InvalidArgumentError(f"invalid argument `acc`: expected Moments or Sketch, got {type(acc).__name__}", 2)
    with _Group(group, timeout) as g:
        shapes = g.gather("comparing the accumulators", lambda: (type(acc).__name__, acc.item_shape))
        kinds = {k for k, _ in shapes}
        items = {s for _, s in shapes if s is not None}
        if len(kinds) > 1 or len(items) > 1:
            raise InvalidArgumentError(
                "invalid argument `acc`: the ranks' accumulators differ: "
                + ", ".join(f"rank {r}: {k} of items {s}" for r, (k, s) in enumerate(shapes)),
                2,
            )
        if not items:
            raise DatasetError("dataset: no rows on any rank", 13)
        item = items.pop()
        # Every rank takes part in each step, those without data too.
        g.run("preparing empty accumulators", lambda: acc._create(item) if acc.item_shape is None else None)
        return _combine_moments(g, acc, item) if isinstance(acc, Moments) else _combine_sketch(g, acc)


def _batches(data, key: Optional[str]):
    if isinstance(data, np.ndarray) or _is_torch(data):
        yield data
    else:
        for b in data:
            yield _take_x(b, key)


def _shape_of(b) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in (b.shape if hasattr(b, "shape") else np.shape(b)))
    if len(shape) == 0:
        raise ShapeMismatchError("`batches` has the wrong size: expected batches of shape (n, *item)", 3)
    return shape


def _place(sketch: Sketch, device) -> Sketch:
    """Applies the ``device`` option to a sketch made from a state (on the host)."""
    if device is not None and str(device) == "cpu":
        sketch._force_cpu = True
    elif _cuda_ordinal(device) is not None:
        sketch._use_cuda(_cuda_ordinal(device))
    return sketch


def fit(
    batches: Union[np.ndarray, Iterable[Any]],
    *,
    rank: Optional[int] = None,
    residual: str = "zero",
    method: Optional[str] = None,
    group=None,
    explained: Optional[float] = None,
    passes: Optional[int] = None,
    oversampling: Optional[int] = None,
    seed: int = 0,
    device=None,
    key: Optional[str] = None,
    value_space: str = "",
    source: str = "",
    timeout: Optional[float] = None,
    labels=None,
) -> Model:
    """Fits one model to the data of every rank of a ``torch.distributed`` process group.

    Call it on every rank of ``group`` (default: the whole world) with that rank's own
    ``batches``: an array or tensor of rows (n, *item), or any iterable of them, of
    ``(x, y)`` tuples or of dicts (as :func:`gaussskip.fit`), e.g. a DataLoader with a
    DistributedSampler. A rank may have no data at all. Batches may be CUDA tensors (the
    sketch consumes them on their device). Every rank returns the same model, the model
    :func:`gaussskip.fit` makes from all the data in one process (rank 0 may save it).

    ``rank`` is the model's number of modes (as in :func:`gaussskip.fit`), not the process
    rank. ``method``: ``"exact"``, ``"sketch"`` (needs ``rank``) or None (the sketch when a
    rank is given and some rank could not hold the dim x dim matrices). The sketch reads the
    batches ``passes`` times (every rank each pass), so they must be re-iterable unless
    ``passes=1``; its ``seed`` must be the same on every rank. ``residual``, ``explained``,
    ``oversampling``, ``device``, ``key``, ``value_space``, ``source``: as for
    :func:`gaussskip.fit`.

    ``timeout``: seconds a rank waits for the others at each step before every rank raises
    :class:`RankFailedError` (default: the process group's timeout). ``labels``: one
    component per class, as :func:`gaussskip.fit` (exact fit; each class's moments are
    combined across ranks, a class a rank never saw counting as empty there).

    Raises :class:`RankFailedError` on every rank when any rank fails (its error named), and
    the library's errors (e.g. :class:`~gaussskip.DatasetError`) as :func:`gaussskip.fit`.
    """
    if labels is not None and labels is not False:
        if method == "sketch":
            raise InvalidArgumentError("invalid argument `method`: fitting by class uses the exact fit", 2)
        return _fit_classes(batches, labels, group, timeout, key, rank, residual, explained, value_space, source)
    if method not in (None, "exact", "sketch"):
        raise InvalidArgumentError(f"invalid argument `method`: expected 'exact', 'sketch' or None, got {method!r}", 2)
    if method == "sketch" and rank is None:
        raise InvalidArgumentError("invalid argument `rank`: the sketch needs a rank", 2)
    with _Group(group, timeout) as g:
        single = isinstance(batches, np.ndarray) or _is_torch(batches)
        one_shot = not single and iter(batches) is batches
        started: Dict[str, Any] = {}

        def peek():
            """(item shape, memory-based choice of method) of the first non-empty batch, or None;
            the batch and the rest of the iterator are kept for pass 1."""
            it = _batches(batches, key)
            b = next((b for b in it if _shape_of(b)[0] > 0), None)
            started["it"], started["batch"] = it, b
            if b is None:
                return None
            item = _shape_of(b)[1:] or (1,)
            return item, _choose(math.prod(item), method, rank)

        infos = g.gather("reading the first batch", peek)
        with_data = [(r, i) for r, i in enumerate(infos) if i is not None]
        if not with_data:
            raise DatasetError("dataset: no rows on any rank", 13)
        shapes = {i[0] for _, i in with_data}
        if len(shapes) > 1:
            raise ShapeMismatchError(
                "`batches` has the wrong size: the ranks' items differ: "
                + ", ".join(f"rank {r}: {i[0]}" for r, i in with_data),
                3,
            )
        item = shapes.pop()
        # One rank that cannot hold the dim x dim matrices decides for all.
        chosen = "sketch" if any(i[1] == "sketch" for _, i in with_data) else "exact"

        def read(acc, again: bool):
            if not again:
                if started["batch"] is not None:
                    acc.update(started["batch"])
                rest = started["it"]
            else:
                rest = _batches(batches, key)
            for b in rest:
                acc.update(b)
            return acc

        if chosen == "exact":

            def exact():
                acc = Moments()
                acc._create(item)
                return read(acc, again=False)

            fitter: Union[Moments, Sketch] = _combine_moments(g, g.run("reading and adding the batches", exact), item)
        else:

            def plan():
                s = Sketch(rank, oversampling=oversampling, passes=passes, seed=seed, device=device)
                s._create(item)
                return s

            local = g.run("planning the sketch", plan)
            total = local.passes
            if total > 1 and any(g.gather("checking that the batches can be read again", lambda: one_shot)):
                raise InvalidArgumentError(
                    "invalid argument `batches`: a rank's batches are a one-shot iterator, but the sketch reads the data "
                    f"{total} times; pass a list or DataLoader, or passes=1",
                    2,
                )
            for p in range(1, total + 1):
                g.run(f"reading and adding the batches (pass {p} of {total})", lambda: read(local, again=p > 1))
                fitter = _combine_sketch(g, local)
                if p == total:
                    break
                # Rank 0 starts the next pass and sends its state (the new test matrix) to all.
                state = g.run(f"starting pass {p + 1}", lambda: fitter.next_pass().to_bytes() if g.index == 0 else None)
                state = g.broadcast_object(f"the broadcast of pass {p + 1}'s state", state)
                local = g.run(f"loading pass {p + 1}'s state", lambda: _place(Sketch.from_bytes(state, item), device))

        def fit_model():
            if g.index != 0:
                return None
            return fitter.fit(rank, residual, explained=explained, value_space=value_space, source=source)

        model = g.run("fitting the model on rank 0", fit_model)
        return g.broadcast_object("the broadcast of the model", model)


def _fit_classes(batches, labels, group, timeout, key, rank, residual, explained, value_space, source) -> Model:
    """fit(labels=...): one accumulator per class on every rank, combined class by class (in
    one order on every rank), fitted on rank 0 and broadcast."""
    from .fit import _class_moments, _fit_class_moments, _sorted_labels

    with _Group(group, timeout) as g:
        single = isinstance(batches, np.ndarray) or _is_torch(batches)
        local = g.run("reading and adding the batches", lambda: _class_moments(batches, labels, single, key))
        seen = g.gather("the class labels", lambda: [(k, m.item_shape) for k, m in local.items()])
        shapes = {shape for per_rank in seen for _, shape in per_rank}
        if not shapes:
            raise DatasetError("dataset: no rows on any rank", 13)
        if len(shapes) > 1:
            raise ShapeMismatchError(f"`batches` has the wrong size: the ranks' items differ: {sorted(shapes)}", 3)
        item = shapes.pop()
        combined = {}
        for label in _sorted_labels({k for per_rank in seen for k, _ in per_rank}):
            acc = local.get(label)
            if acc is None:
                acc = Moments()
                acc._create(item)
            combined[label] = _combine_moments(g, acc, item)

        def fit_model():
            if g.index != 0:
                return None
            return _fit_class_moments(combined, rank, residual, explained, value_space, source)

        model = g.run("fitting the model on rank 0", fit_model)
        return g.broadcast_object("the broadcast of the model", model)
