"""tvreg.compose.merge against peft.utils.merge_utils, plus validation, DARE seeding and global trim.

peft's ``merge_utils`` is loaded straight from its file in the installed package (it imports only
torch), so the comparison does not pay for importing transformers; without peft those tests skip.
DARE is compared by handing peft the very masks tvreg draws: peft's module sees a ``torch`` whose
``bernoulli`` returns them in call order, everything else is the real torch.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import math
import pathlib
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tvreg.compose.merge import (
    METHODS,
    MagnitudeQuantile,
    MergeParams,
    dare_mask,
    dare_seed,
    merge_tensor,
    needs_thresholds,
)
from tvreg.errors import InvalidInput, NonFiniteValues

#: the methods peft has (the spectral ones are checked against fusion_bench in
#: test_spectral.py, mergekit's others against mergekit in test_merge_methods.py)
PEFT_METHODS = ["task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune"]
assert set(PEFT_METHODS) <= set(METHODS)


def _load_peft_merge_utils():
    spec = importlib.util.find_spec("peft")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "utils" / "merge_utils.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location("_peft_merge_utils", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


PM = _load_peft_merge_utils()
# peft is a declared test dependency (pyproject's `test` extra): its absence is a failure, not a
# reason to skip the reference comparison
needs_peft = pytest.mark.usefixtures("_peft_present")


@pytest.fixture
def _peft_present():
    assert PM is not None, "peft is not installed: pip install -e '.[test]'"

SHAPES = [(257,), (48, 40), (6, 10, 12)]


def task_vectors(shape, n, seed, dtype=torch.float32):
    """Fake task vectors: a shared direction plus task-specific parts, a few heavy entries."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(shape, generator=g, dtype=torch.float64)
    out = []
    for i in range(n):
        own = torch.randn(shape, generator=g, dtype=torch.float64)
        sparse = torch.randn(shape, generator=g, dtype=torch.float64) * \
            (torch.rand(shape, generator=g, dtype=torch.float64) < 0.05)
        scale = 1e-3 * (1 + i)
        out.append((scale * (0.6 * shared + own + 8 * sparse)).to(dtype))
    return out


class _TorchWithMasks:
    """``torch`` for peft's module, whose ``bernoulli`` returns the given masks in order and
    whose ``topk`` breaks ties at the cut as tvreg does (the lowest positions first: a stable
    descending sort; torch's own ``topk`` picks among them by an order of its sort)."""

    def __init__(self, masks=()):
        self._masks = list(masks)

    @staticmethod
    def topk(input, k, largest=True):
        assert largest
        index = torch.argsort(input, descending=True, stable=True)[:k]
        return input[index], index

    def bernoulli(self, input, *args, **kwargs):
        mask = self._masks.pop(0)
        assert mask.shape == input.shape
        assert torch.all(input == input.reshape(-1)[0])  # a constant probability (the density)
        return mask.to(input.dtype)

    def __getattr__(self, name):
        return getattr(torch, name)


def peft_merge(params, deltas, weights, name, monkeypatch):
    dtype = torch.float64 if any(d.dtype == torch.float64 for d in deltas) else torch.float32
    ts = [d.to(dtype) for d in deltas]
    w = torch.tensor(weights, dtype=dtype)
    m, d = params.method, params.density
    masks = [dare_mask(params.seed, name, i, ts[0].shape, d) for i in range(len(ts))] \
        if m.startswith("dare") else []
    with warnings.catch_warnings(), monkeypatch.context() as mp:
        warnings.simplefilter("ignore")  # peft warns about density >= 1
        mp.setattr(PM, "torch", _TorchWithMasks(masks))
        if m == "task_arithmetic":
            return PM.task_arithmetic(ts, w)
        if m == "magnitude_prune":
            return PM.magnitude_prune(ts, w, d)
        if m == "ties":
            return PM.ties(ts, w, d, params.majority_sign)
        if m == "dare_linear":
            return PM.dare_linear(ts, w, d)
        return PM.dare_ties(ts, w, d, params.majority_sign)


def assert_matches(out, ref, exact=True):
    """Bit for bit (``exact``: up to three operands, which torch's ``sum(dim=0)`` adds in
    operand order as tvreg does), else within float rounding."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if exact:
        assert torch.equal(out, ref), f"{int((out != ref).sum())} entries differ"
        return
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6 * scale)


def _params(method, density, majority_sign="total", seed=0):
    if method == "task_arithmetic":
        return MergeParams(method)
    ms = majority_sign if method in ("ties", "dare_ties") else "total"
    s = seed if method.startswith("dare") else 0
    return MergeParams(method, density=density, majority_sign=ms, seed=s)


# --- against peft -----------------------------------------------------------------------------


PEFT_CASES = [("task_arithmetic", None, "total")] + [
    (m, d, ms) for m in PEFT_METHODS[1:] for d in (0.2, 0.55, 1.0)
    for ms in (("total", "frequency") if m in ("ties", "dare_ties") else ("total",))]


@needs_peft
@pytest.mark.parametrize("method, density, majority_sign", PEFT_CASES)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_matches_peft(method, density, majority_sign, n, monkeypatch):
    params = _params(method, density, majority_sign, seed=7)
    weights = [1.0, -0.5, 0.3, 2.0][:n]
    for j, shape in enumerate(SHAPES):
        deltas = task_vectors(shape, n, seed=100 * n + j)
        name = f"layers.{j}.weight"
        out = merge_tensor(params, deltas, weights, name=name)
        assert_matches(out, peft_merge(params, deltas, weights, name, monkeypatch), n <= 3)


@needs_peft
@pytest.mark.parametrize("method", PEFT_METHODS)
def test_matches_peft_float64_and_mixed_dtypes(method, monkeypatch):
    params = _params(method, 0.3, "frequency", seed=3)
    deltas = task_vectors((40, 24), 3, seed=5, dtype=torch.float64)
    deltas[1] = deltas[1].to(torch.float32)  # any float64 operand -> float64 arithmetic
    weights = [0.5, 0.25, -1.0]
    out = merge_tensor(params, deltas, weights, name="w")
    assert out.dtype == torch.float64
    assert_matches(out, peft_merge(params, deltas, weights, "w", monkeypatch))


@needs_peft
@pytest.mark.parametrize("method", PEFT_METHODS)
def test_bf16_inputs_merge_in_float32(method, monkeypatch):
    params = _params(method, 0.4)
    deltas = task_vectors((33, 17), 2, seed=9, dtype=torch.bfloat16)
    out = merge_tensor(params, deltas, [1.0, 0.7], name="b")
    assert out.dtype == torch.float32
    ref = peft_merge(params, [d.float() for d in deltas], [1.0, 0.7], "b", monkeypatch)
    assert_matches(out, ref)


def test_ties_formula_by_hand():
    """Independent of peft: trim, elect by total sign, disjoint mean with weights after election."""
    a = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0, 0.0])
    b = torch.tensor([-2.0, -3.0, 0.1, -2.0, 1.0, 0.0])
    p = MergeParams("ties", density=0.5)  # keeps 3 of 6: a -> [3, 0, 0, 2, -4, 0]; b -> [-2, -3, 0, -2, 0, 0]
    out = merge_tensor(p, [a, b], [1.0, 2.0])
    # entry 0: sum 1 -> +, only a agrees: 3/1; entry 1: only b: -6/1; entry 3: sum 0 -> +: a: 2/1;
    # entry 4: only a (-4): -4/1; entries 2, 5: nothing kept -> 0.
    assert out.tolist() == [3.0, -6.0, 0.0, 2.0, -4.0, 0.0]
    f = merge_tensor(MergeParams("ties", density=0.5, majority_sign="frequency"), [a, b], [1.0, 2.0])
    # entry 0: signs +,- -> sum 0 -> +: 3; entry 3: +,- -> +: 2
    assert f.tolist() == [3.0, -6.0, 0.0, 2.0, -4.0, 0.0]
    c = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    g = merge_tensor(MergeParams("ties", density=1.0), [c, c, -c], [1.0, 1.0, 5.0])
    assert g.tolist() == [1.0] * 6  # two agree (+), the weighted -5 is left out


def test_empty_and_scalar_tensors():
    for method in PEFT_METHODS:
        p = _params(method, 0.5)
        e = merge_tensor(p, [torch.zeros(0, 3), torch.zeros(0, 3)], [1.0, 1.0], name="e")
        assert e.shape == (0, 3)
        s = merge_tensor(p, [torch.tensor(2.0), torch.tensor(-1.0)], [1.0, 1.0], name="s")
        assert s.shape == ()


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="mean"), "unknown merge method 'mean'; known: task_arithmetic, ties"),
    (dict(method="ties"), "ties needs a density"),
    (dict(method="dare_linear", density=0.0), "density must be in (0, 1]"),
    (dict(method="ties", density=1.5), "density must be in (0, 1]"),
    (dict(method="ties", density=-0.1), "density must be in (0, 1]"),
    (dict(method="ties", density=float("nan")), "density must be in (0, 1]"),
    (dict(method="ties", density="0.5"), "density must be a number"),
    (dict(method="ties", density=True), "density must be a number"),
    (dict(density=0.5), "density has no meaning for task_arithmetic"),
    (dict(method="ties", density=0.5, trim="layer"), "unknown trim 'layer'"),
    (dict(method="dare_ties", density=0.5, trim="global"), "trim=global has no meaning for dare_ties"),
    (dict(trim="global"), "trim=global has no meaning for task_arithmetic"),
    (dict(method="ties", density=0.5, majority_sign="mean"), "unknown majority_sign 'mean'"),
    (dict(method="magnitude_prune", density=0.5, majority_sign="frequency"),
     "majority_sign=frequency has no meaning for magnitude_prune"),
    (dict(method="ties", density=0.5, seed=3), "seed has no meaning for ties"),
    (dict(method="dare_ties", density=0.5, seed=1.5), "seed must be an integer"),
])
def test_params_validation(kwargs, message):
    with pytest.raises(InvalidInput) as info:
        MergeParams(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_params_json_round_trip():
    cases = [MergeParams(), MergeParams("ties", density=0.2, trim="global", majority_sign="frequency"),
             MergeParams("dare_linear", density=0.9, seed=42), MergeParams("dare_ties", density=1),
             MergeParams("magnitude_prune", density=0.5)]
    assert cases[0].to_json() == {"method": "task_arithmetic"}
    assert cases[2].to_json() == {"method": "dare_linear", "density": 0.9, "seed": 42}
    assert cases[3].to_json() == {"method": "dare_ties", "density": 1.0, "seed": 0,
                                  "majority_sign": "total"}
    for p in cases:
        assert MergeParams.from_json(p.to_json()) == p
    with pytest.raises(InvalidInput, match="unknown merge parameter"):
        MergeParams.from_json({"method": "ties", "density": 0.5, "kappa": 3})


def test_needs_thresholds():
    assert needs_thresholds(MergeParams("ties", density=0.5, trim="global"))
    assert needs_thresholds(MergeParams("magnitude_prune", density=0.5, trim="global"))
    assert not needs_thresholds(MergeParams("ties", density=1.0, trim="global"))
    assert not needs_thresholds(MergeParams("ties", density=0.5))
    assert not needs_thresholds(MergeParams("dare_ties", density=0.5))
    assert not needs_thresholds(MergeParams())


def test_merge_tensor_input_errors():
    p = MergeParams("ties", density=0.5)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(InvalidInput, match="no operands"):
        merge_tensor(p, [], [])
    with pytest.raises(InvalidInput, match="2 deltas but 1 weights"):
        merge_tensor(p, [a, b], [1.0])
    with pytest.raises(InvalidInput, match="has shape \\[3, 4\\]"):
        merge_tensor(p, [a, b.T], [1.0, 1.0])
    with pytest.raises(InvalidInput, match="not a floating-point tensor"):
        merge_tensor(p, [a, torch.ones(4, 3, dtype=torch.int64)], [1.0, 1.0])
    with pytest.raises(InvalidInput, match="non-finite weight"):
        merge_tensor(p, [a, b], [1.0, math.inf])
    with pytest.raises(InvalidInput, match="thresholds given"):
        merge_tensor(p, [a, b], [1.0, 1.0], thresholds=[0.1, 0.1])
    g = MergeParams("ties", density=0.5, trim="global")
    with pytest.raises(InvalidInput, match="trim=global needs one threshold per operand"):
        merge_tensor(g, [a, b], [1.0, 1.0])
    with pytest.raises(InvalidInput, match="2 deltas but 1 thresholds"):
        merge_tensor(g, [a, b], [1.0, 1.0], thresholds=[0.1])


# --- DARE seeding -----------------------------------------------------------------------------


def test_dare_is_deterministic_and_leaves_global_rng_alone():
    p = MergeParams("dare_ties", density=0.3, seed=11)
    deltas = task_vectors((64, 32), 3, seed=1)
    state = torch.get_rng_state()
    first = merge_tensor(p, deltas, [1.0, 0.5, -0.2], name="h.0.attn")
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    assert torch.equal(merge_tensor(p, deltas, [1.0, 0.5, -0.2], name="h.0.attn"), first)
    other = merge_tensor(MergeParams("dare_ties", density=0.3, seed=12), deltas, [1.0, 0.5, -0.2],
                         name="h.0.attn")
    assert not torch.equal(other, first)


def test_dare_mask_depends_only_on_seed_name_index():
    p = MergeParams("dare_linear", density=0.25, seed=5)
    ones = torch.ones(50, 40)
    zero = torch.zeros(50, 40)
    for i in range(3):
        ops = [zero] * 3
        ops[i] = ones
        out = merge_tensor(p, ops, [1.0, 1.0, 1.0], name="blk.ffn")
        assert torch.equal(out, dare_mask(5, "blk.ffn", i, (50, 40), 0.25) / 0.25)
    masks = {(s, n, i): dare_mask(s, n, i, (50, 40), 0.25)
             for s in (5, 6) for n in ("a", "b") for i in (0, 1)}
    assert len({tuple(m.reshape(-1).tolist()) for m in masks.values()}) == len(masks)
    assert len({dare_seed(s, n, i) for s, n, i in masks}) == len(masks)
    assert all(0 <= dare_seed(s, n, i) < 2 ** 63 for s, n, i in masks)


def test_dare_independent_of_tensor_order_and_thread():
    p = MergeParams("dare_linear", density=0.5, seed=1)
    names = [f"t{i}" for i in range(6)]
    data = {n: task_vectors((20, 20), 2, seed=i) for i, n in enumerate(names)}
    forward = {n: merge_tensor(p, data[n], [1.0, 1.0], name=n) for n in names}
    backward = {n: merge_tensor(p, data[n], [1.0, 1.0], name=n) for n in reversed(names)}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        threaded = dict(zip(names, pool.map(lambda n: merge_tensor(p, data[n], [1.0, 1.0], name=n),
                                            names)))
    for n in names:
        assert torch.equal(forward[n], backward[n]) and torch.equal(forward[n], threaded[n])


def test_dare_mask_statistics_and_rescale():
    density = 0.3
    m = dare_mask(0, "big", 0, (400, 500), density)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    n = m.numel()
    sigma = math.sqrt(density * (1 - density) / n)
    assert abs(float(m.mean()) - density) < 5 * sigma
    x = torch.full((400, 500), 2.0)
    out = merge_tensor(MergeParams("dare_linear", density=density), [x], [1.0], name="big")
    kept = out != 0
    assert torch.equal(kept, m.bool())
    assert torch.allclose(out[kept], torch.tensor(2.0 / density))
    # density 1: nothing dropped, nothing rescaled (as peft)
    assert torch.equal(merge_tensor(MergeParams("dare_linear", density=1.0), [x], [1.0]), x)


# --- global trim ------------------------------------------------------------------------------


def _quantile(density, pieces):
    q = MagnitudeQuantile(density, sum(p.numel() for p in pieces))
    for step in (q.pass1, q.pass2):
        for p in pieces:
            step(p)
    return q.threshold()


@pytest.mark.parametrize("method, majority_sign",
                         [("ties", "total"), ("ties", "frequency"), ("magnitude_prune", "total")])
@pytest.mark.parametrize("density", [0.01, 0.3, 0.77])
def test_global_trim_equals_tensor_trim_for_one_tensor(method, majority_sign, density):
    deltas = task_vectors((96, 64), 3, seed=21)
    weights = [0.9, -0.3, 1.1]
    # the whole vector is this one tensor; the quantile still sees it in uneven pieces
    thresholds = [_quantile(density, list(d.reshape(-1).split([1000, 3000, 2144]))) for d in deltas]
    glob = MergeParams(method, density=density, trim="global", majority_sign=majority_sign)
    per = MergeParams(method, density=density, majority_sign=majority_sign)
    out = merge_tensor(glob, deltas, weights, name="x", thresholds=thresholds)
    assert torch.equal(out, merge_tensor(per, deltas, weights, name="x"))


def test_global_trim_spans_tensors_and_keeps_ties():
    a = torch.tensor([[0.1, -5.0], [2.0, 0.0]])
    b = torch.tensor([2.0, -2.0, 0.3, 7.0, 0.2, 0.0])
    t = _quantile(0.5, [a, b])  # 10 values, k = 5: |x| sorted 7, 5, 2, 2, 2, ...
    assert t == 2.0
    p = MergeParams("magnitude_prune", density=0.5, trim="global")
    assert merge_tensor(p, [a], [1.0], thresholds=[t]).tolist() == [[0.0, -5.0], [2.0, 0.0]]
    assert merge_tensor(p, [b], [1.0], thresholds=[t]).tolist() == [2.0, -2.0, 0.0, 7.0, 0.0, 0.0]
    # k = 0 keeps nothing
    assert _quantile(0.05, [a, b]) == math.inf
    assert merge_tensor(p, [b], [1.0], thresholds=[math.inf]).abs().sum() == 0


# --- MagnitudeQuantile ------------------------------------------------------------------------


def _kth_largest_abs(x, k):
    return float(torch.topk(x.abs().reshape(-1).float(), k).values[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("density", [1e-4, 0.1, 0.5, 0.999, 1.0])
def test_quantile_exact_on_random_pieces(dtype, density):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20011, generator=g) * torch.exp(3 * torch.randn(20011, generator=g))
    x = x.clamp(-6e4, 6e4).to(dtype)  # finite in float16 too
    sizes = [1, 5000, 0, 777, 20011 - 5778]
    k = int(density * x.numel())
    got = _quantile(density, [p.reshape(-1, 1) for p in x.split(sizes)])
    assert got == _kth_largest_abs(x, k)
    # kthvalue agrees (k-th largest == (n-k+1)-th smallest)
    assert got == float(torch.kthvalue(x.abs().float(), x.numel() - k + 1).values)


def test_quantile_ties_zeros_and_signed_zero():
    x = torch.tensor([0.0, -0.0, 0.0, 1.5, -1.5, 1.5, 0.0, 3.0, -0.0, 1e-40])
    for density in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 1.0]:
        k = int(density * x.numel())
        for pieces in ([x], list(x.split(3)), [x[:1], x[1:]]):
            assert _quantile(density, pieces) == _kth_largest_abs(x, k)
    assert _quantile(0.5, [x]) == float(torch.tensor(1e-40))  # a float32 subnormal
    assert _quantile(0.6, [x]) == 0.0
    assert _quantile(0.7, [torch.zeros(5), torch.zeros(3)]) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=40), min_size=1, max_size=5),
       st.floats(0.01, 1.0))
def test_quantile_property(pieces, density):
    tensors = [torch.tensor(p, dtype=torch.float32) for p in pieces]
    x = torch.cat(tensors)
    k = int(density * x.numel())
    got = _quantile(density, tensors)
    assert got == (math.inf if k == 0 else _kth_largest_abs(x, k))


def test_quantile_errors():
    with pytest.raises(NonFiniteValues):
        MagnitudeQuantile(0.5, 3).pass1(torch.tensor([1.0, math.nan, 2.0]))
    with pytest.raises(NonFiniteValues):
        MagnitudeQuantile(0.5, 3).pass1(torch.tensor([1.0, -math.inf, 2.0]))
    with pytest.raises(InvalidInput, match="density must be in"):
        MagnitudeQuantile(0.0, 3)
    with pytest.raises(InvalidInput, match="total must be"):
        MagnitudeQuantile(0.5, -1)
    q = MagnitudeQuantile(0.5, 4)
    q.pass1(torch.ones(3))
    with pytest.raises(InvalidInput, match="pass1 saw 3 values, expected total=4"):
        q.pass2(torch.ones(3))
    q = MagnitudeQuantile(0.5, 4)
    q.pass1(torch.ones(4))
    with pytest.raises(InvalidInput, match="needs both passes"):
        q.threshold()
    q.pass2(torch.ones(4))
    with pytest.raises(InvalidInput, match="pass1 after pass2"):
        q.pass1(torch.ones(1))
    assert q.threshold() == 1.0


# --- the numpy kernels (merge_kernels.py): tie rule, chunking, operand order ------------------


def _stable_top(x: torch.Tensor, k: int, as32: bool) -> torch.Tensor:
    """The reference keep mask: the first k of a stable descending sort of |x|."""
    mag = x.abs().reshape(-1)
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[torch.argsort(mag.float() if as32 else mag, descending=True, stable=True)[:k]] = True
    return mask


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-4, 4), min_size=1, max_size=60), st.floats(0.0, 1.0),
       st.booleans(), st.integers(1, 9))
def test_magnitude_trim_keeps_the_lowest_positions_of_ties(values, density, as32, chunk):
    """Heavily tied values, chunks as small as one entry: the kept set is the stable sort's."""
    import numpy as np

    from tvreg.compose import merge_kernels as mk

    x = torch.tensor(values, dtype=torch.float64 if as32 else torch.float32) * 0.375
    k = int(density * x.numel())
    keep = mk.magnitude_keep(x.numpy(), k, as32=as32)
    old = mk.CHUNK
    try:
        mk.CHUNK = chunk
        got = torch.from_numpy(mk.merge_flat([x.numpy()], [keep], [1.0], combine="sum"))
    finally:
        mk.CHUNK = old
    want = x * _stable_top(x, k, as32).to(x.dtype)
    assert torch.equal(got, want)  # the sum starts from +0.0: a -0.0 entry comes out +0.0
    trimmed = torch.from_numpy(mk.trim_flat(x.numpy(), keep))
    assert torch.equal(trimmed, want) and torch.equal(trimmed.signbit(), want.signbit())
    assert not np.shares_memory(trimmed.numpy(), x.numpy())


def test_ties_at_the_cut_differ_from_peft_only_there():
    """peft's own topk picks other tied entries: the trims differ only at entries tied at the
    cut, and both keep k of them."""
    from tvreg.compose.merge_kernels import magnitude_keep, trim_flat

    g = torch.Generator().manual_seed(3)
    x = torch.randint(-6, 7, (300, 17), generator=g).float() * 2.0 ** -10
    for density in (0.1, 0.35, 0.5, 0.8):
        k = int(density * x.numel())
        ours = torch.from_numpy(trim_flat(x.numpy().reshape(-1), magnitude_keep(
            x.numpy().reshape(-1), k, as32=False))).reshape(x.shape)
        theirs = PM.magnitude_based_pruning(x, density) if PM else ours
        cut = torch.kthvalue(x.abs().reshape(-1), x.numel() - k + 1).values
        differ = ours != theirs
        assert bool((x.abs()[differ] == cut).all())
        assert int((ours != 0).sum()) == int((theirs != 0).sum()) == int((x.abs() >= cut).sum()
                                                                          .clamp(max=k))


@pytest.mark.parametrize("method, rule", [(m, "peft") for m in PEFT_METHODS] + [
    (m, "mergekit") for m in PEFT_METHODS if m != "magnitude_prune"])  # mergekit has none
def test_chunking_changes_nothing(method, rule, monkeypatch):
    """The kernels' chunk size is invisible: chunks of 7 entries give the same bits as one."""
    from tvreg.compose import merge_kernels as mk

    deltas = task_vectors((61, 13), 3, seed=11)
    deltas[2] = torch.round(deltas[2] * 2e3) / 2e3  # ties at the cut too
    params = (_params(method, 0.45, "frequency", seed=2) if rule == "peft" else
              MergeParams(method, density=None if method == "task_arithmetic" else 0.45,
                          rule="mergekit", seed=2 if method.startswith("dare") else 0))
    whole = merge_tensor(params, deltas, [0.7, -0.4, 0.9], name="t")
    monkeypatch.setattr(mk, "CHUNK", 7)
    assert torch.equal(merge_tensor(params, deltas, [0.7, -0.4, 0.9], name="t"), whole)


def test_many_operands_add_in_operand_order():
    """Five operands: ((0 + w0·x0) + w1·x1) + …, whatever torch's sum(dim=0) would regroup."""
    deltas = task_vectors((257, 9), 5, seed=4)
    weights = [0.3, -1.1, 0.7, 2.0, -0.05]
    want = torch.zeros(deltas[0].shape)
    for d, w in zip(deltas, weights, strict=True):
        want = want + d * torch.tensor(w)
    assert torch.equal(merge_tensor(MergeParams(), deltas, weights), want)
    p = MergeParams("ties", density=1.0)  # no trim: the elected disjoint mean, in order
    total = torch.zeros(deltas[0].shape)
    for d in deltas:
        total = total + d
    elected = torch.where(total >= 0, 1.0, -1.0)
    mixed, count = torch.zeros(deltas[0].shape), torch.zeros(deltas[0].shape)
    for d, w in zip(deltas, weights, strict=True):
        agree = (d.sign() == elected).float()
        mixed = mixed + d * torch.tensor(w) * agree
        count = count + agree
    assert torch.equal(merge_tensor(p, deltas, weights), mixed / count.clamp(min=1.0))
