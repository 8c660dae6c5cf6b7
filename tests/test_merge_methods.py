"""mergekit's other data-free methods (breadcrumbs, DELLA, slerp, nuslerp, karcher, model_stock)
and TALL-mask consensus, against the peers' own functions on the same tensors (issue 17,
item 2). The whole-model comparison with mergekit-yaml is in test_mergekit.py."""

from __future__ import annotations

import contextlib
import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from tvreg.cli.main import cli
from tvreg.compose.consensus import consensus
from tvreg.compose.interpolation import karcher, nuslerp, slerp
from tvreg.compose.merge import MergeParams, merge_tensor, operand_generator
from tvreg.compose.merge_kernels import trim_flat
from tvreg.compose.sparsify import band_keep, della_keep_probabilities
from tvreg.errors import InvalidInput

mergekit_sparsify = pytest.importorskip("mergekit.sparsify")


def _tied(shape, seed):
    """Random values on a coarse grid: many equal magnitudes, as real deltas have."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-25, 26, shape, generator=gen).float() * 0.0625


@contextlib.contextmanager
def stable_sorts(bernoulli=None):
    """mergekit's sparsify with its sorts made stable (tvreg's tie rule) and, if given, its
    ``torch.bernoulli`` replaced (tvreg's seeded draws)."""

    class Torch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def argsort(x, dim=-1, descending=False):
            return torch.argsort(x, dim=dim, descending=descending, stable=True)

        @staticmethod
        def sort(x, dim=-1, descending=False):
            return torch.sort(x, dim=dim, descending=descending, stable=True)

    proxy = Torch()
    if bernoulli is not None:
        proxy.bernoulli = bernoulli  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mergekit_sparsify, "torch", proxy)
        yield


@pytest.mark.parametrize("density, gamma", [(0.9, 0.01), (0.5, 0.1), (0.2, 0.3), (0.7, 0.5),
                                            (0.05, 0.0), (0.999, 0.01)])
def test_breadcrumbs_band_equals_mergekit(density, gamma):
    t = _tied((60, 40), 1)
    ours = torch.from_numpy(trim_flat(t.reshape(-1).numpy(), band_keep(
        t.reshape(-1).numpy(), density, gamma))).reshape(t.shape)
    theirs_unstable = mergekit_sparsify.magnitude_outliers(t, density, gamma=gamma)
    with stable_sorts():
        theirs = mergekit_sparsify.magnitude_outliers(t, density, gamma=gamma)
    assert torch.equal(ours, theirs)
    assert int((ours != 0).sum()) == int((t * (theirs != 0)).ne(0).sum())
    differ = ours != theirs_unstable  # their own sort: other entries only among the tied ones
    if differ.any():
        mags = t.abs()[differ]
        kept = t.abs()[ours != 0]
        assert bool(((mags == kept.min()) | (mags == kept.max())).all())


def test_breadcrumbs_edge_cases():
    x = torch.randn(1000).numpy()
    assert band_keep(x, 1.0, 0.1).kind == "all"
    assert band_keep(x, 0.0001, 0.1).kind == "none"  # int(0.1) = 0 entries
    assert band_keep(torch.zeros(0).numpy(), 0.5, 0.1).kind == "none"


@pytest.mark.parametrize("shape", [(30, 20), (500,), (4, 6, 5), (7, 1)])
@pytest.mark.parametrize("density, epsilon", [(0.5, 0.15), (0.3, 0.25), (0.8, 0.1)])
def test_della_equals_mergekit(shape, density, epsilon):
    t = _tied(shape, 2)
    if shape == (7, 1):  # rows of one entry: mergekit divides by zero (NaN probabilities)
        probs = della_keep_probabilities(t, density, epsilon)
        assert torch.equal(probs, torch.full(shape, density, dtype=torch.float32))
        return
    seen = []

    def bernoulli(p):
        seen.append(p.clone())
        return torch.bernoulli(p, generator=operand_generator("della", 7, "w", 0))

    with stable_sorts(bernoulli):
        theirs = mergekit_sparsify.della_magprune(t, density, epsilon,
                                                  rescale_norm=mergekit_sparsify.RescaleNorm.l1)
    assert torch.equal(della_keep_probabilities(t, density, epsilon), seen[0].reshape(shape))
    ours = merge_tensor(MergeParams("della_linear", density=density, epsilon=epsilon, seed=7),
                        [t], [1.0], name="w")
    assert torch.equal(ours, theirs)


def test_della_bounds():
    with pytest.raises(InvalidInput, match="density ± epsilon"):
        MergeParams("della", density=0.9, epsilon=0.15)
    with pytest.raises(InvalidInput, match="density ± epsilon"):
        MergeParams("della", density=0.1)
    MergeParams("della", density=1.0, epsilon=0.5)  # nothing dropped: no bound


def _rows(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 17, generator=gen) for _ in range(4)]


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_equals_mergekit(t):
    from mergekit.merge_methods.slerp import slerp as theirs

    a, b, *_ = _rows(9, 3)
    for v0, v1 in [(a, b), (a, 2.5 * a), (a, -a), (a.reshape(-1), b.reshape(-1))]:
        expect = theirs(torch.tensor([t]), v0.unsqueeze(0), v1.unsqueeze(0)).squeeze(0)
        got = slerp(t, v0, v1)
        assert torch.allclose(got, expect, rtol=1e-6, atol=1e-7), (t, v0.shape)


@pytest.mark.parametrize("row_wise, flatten", [(False, True), (False, False), (True, False)])
def test_nuslerp_equals_mergekit(row_wise, flatten):
    from mergekit.merge_methods.nuslerp import nuslerp as theirs

    a, b, *_ = _rows(9, 4)
    for t in (0.25, 0.7):
        for v1 in (b, a * 3):
            expect = theirs(t, a, v1, dim=0 if row_wise else -1, flatten=flatten)
            assert torch.equal(nuslerp(t, a, v1, row_wise=row_wise, flatten=flatten), expect)


def test_karcher_equals_mergekit():
    from mergekit.merge_methods.karcher import karcher_merge_tensors as theirs

    ts = _rows(9, 5)
    for k in (2, 3, 4):
        alphas = [1.0 / k] * k
        assert torch.equal(karcher(ts[:k], alphas), theirs(ts[:k], alphas))
    assert torch.equal(karcher([ts[0], 0 * ts[0]], [0.5, 0.5]),
                       theirs([ts[0], 0 * ts[0]], [0.5, 0.5]))


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_equals_mergekit(filter_wise):
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.merge_methods.model_stock import model_stock_merge_method

    base = torch.randn(9, 17, generator=torch.Generator().manual_seed(6))
    taus = [0.1 * x for x in _rows(9, 7)[:3]]
    group = TensorGroup.from_tensors([base] + [base + x for x in taus], base_index=0)
    theirs = model_stock_merge_method.implementation(group, filter_wise=filter_wise)
    ours = merge_tensor(MergeParams("model_stock", filter_wise=filter_wise), taus, [1.0] * 3)
    # mergekit computes on weights (θ₀ + mean of θᵢ − θ₀): equal up to that rounding
    assert torch.allclose(base + ours, theirs, rtol=0, atol=5e-7)


def test_consensus_equals_fusion_bench():
    from fusion_bench.method.tall_mask.utils import generate_task_masks

    taus = [_tied((40, 30), s) for s in (8, 9, 10)]
    flat = torch.stack([x.reshape(-1) for x in taus])
    for lam in (0.2, 0.6, 1.0):
        masks = generate_task_masks(flat, flat, torch.zeros_like(flat[0]), tall_mask_lambda=lam)
        total = flat.sum(0)
        for k in (0, 1, 2, 3, 4):
            expect = (total * (masks.float().sum(0) >= k)).reshape(40, 30)
            got = consensus(taus, k=k, tall_mask_lambda=lam)
            assert torch.equal(got, expect), (lam, k)
    assert torch.equal(consensus(taus, k=0), taus[0] + taus[1] + taus[2])


# --- through the registry -------------------------------------------------------------------


def _invoke(reg, *args, code=0):
    r = CliRunner().invoke(cli, ["--registry", str(reg.root), *args])
    assert r.exit_code == code, r.output
    return r


@pytest.mark.parametrize("method, opts", [
    ("breadcrumbs", ["--density", "0.8", "--gamma", "0.05"]),
    ("breadcrumbs_ties", ["--density", "0.8", "--normalize"]),
    ("della", ["--density", "0.5", "--epsilon", "0.2", "--seed", "3"]),
    ("della_linear", ["--density", "0.5"]),
    ("model_stock", []), ("model_stock", ["--filter-wise"]),
    ("consensus", ["--k", "2", "--tall-mask-lambda", "0.4"]),
    ("karcher", []),
])
def test_cli_compose_save_reproduce(filled, zoo, method, opts, tmp_path):
    """Every method from the CLI: saved with its recipe, reproduced bit for bit, its recipe
    file (`show --recipe`) merged again to the same vector."""
    if method == "karcher":
        _invoke(filled, "base", "add", str(zoo.base), "--name", "toy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _invoke(filled, "compose", "sentiment + topic + toxicity", "--method", method,
                      *opts, "--save", "m", "--no-similarities").stdout.strip()
    show = json.loads(_invoke(filled, "show", ref, "--json").stdout)
    assert show["recipe"]["method"]["method"] == method
    assert _invoke(filled, "reproduce", ref).stdout.strip() == show["vector_id"]
    recipe = tmp_path / "r.yml"
    recipe.write_text(_invoke(filled, "show", ref, "--recipe").stdout)
    again = _invoke(filled, "merge", str(recipe), "--save", "m2",
                    "--no-similarities").stdout.strip()
    assert json.loads(_invoke(filled, "show", again, "--json").stdout)["vector_id"] \
        == show["vector_id"]  # the same tensors


def test_slerp_from_the_cli_and_python(filled, zoo, tmp_path):
    out = tmp_path / "s.safetensors"
    r = _invoke(filled, "compose", "sentiment + topic", "--method", "slerp", "--t", "0.3",
                "-o", str(out), code=2)  # no base at hand: refused, nothing written
    assert "base" in r.output and not out.exists()
    r = _invoke(filled, "apply", "sentiment + topic", "--method", "slerp", "--t", "0.3",
                "--base", str(zoo.base), "-o", str(out))
    assert out.exists()
    _invoke(filled, "base", "add", str(zoo.base), "--name", "toy")
    comp = filled.resolve("sentiment + topic", method="slerp", t=0.3)
    from safetensors.torch import load_file

    base, a, b = load_file(zoo.base), load_file(zoo.finetuned["sentiment"]), \
        load_file(zoo.finetuned["topic"])
    applied = load_file(str(out))
    for name, delta in comp.state_dict().items():
        ta, tb = base[name] + (a[name] - base[name]), base[name] + (b[name] - base[name])
        expect = slerp(0.3, ta, tb)
        assert torch.allclose(base[name] + delta, expect, atol=1e-6), name
        assert torch.allclose(applied[name], expect, atol=1e-6), name
    one = filled.resolve("sentiment", method="slerp", t=1.0).state_dict()  # base -> it
    sent = filled.get("sentiment").state_dict()
    assert all(torch.allclose(one[n], sent[n], atol=1e-6) for n in one)


@pytest.mark.parametrize("expr, opts, word", [
    ("sentiment + topic + toxicity", ["--method", "slerp", "--t", "0.5"], "two"),
    ("sentiment + topic", ["--method", "slerp"], "needs t"),
    ("sentiment", ["--method", "nuslerp"], "two vectors"),
    ("sentiment", ["--method", "model_stock"], "at least two"),
    ("sentiment + topic", ["--method", "breadcrumbs", "--gamma", "1.5"], "gamma"),
    ("sentiment + topic", ["--method", "della", "--density", "0.9"], "epsilon"),
    ("sentiment + topic", ["--method", "ties", "--density", "0.5", "--gamma", "0.1"],
     "gamma has no meaning"),
    ("sentiment + topic", ["--method", "consensus", "--k", "-1"], "k must"),
    ("sentiment + topic", ["--method", "breadcrumbs", "--rule", "peft"], "mergekit"),
    ("sentiment + topic", ["--method", "karcher", "--rule", "mergekit"], "rule"),
])
def test_bad_input(filled, tmp_path, expr, opts, word):
    out = tmp_path / "o.safetensors"
    r = _invoke(filled, "compose", expr, *opts, "-o", str(out), code=2)
    assert word in r.output and not out.exists()
    assert len(r.output.strip().splitlines()) == 1


def test_model_stock_warns_on_different_tasks(filled):
    with pytest.warns(UserWarning, match="one task"):
        filled.resolve("sentiment + topic", method="model_stock")


def test_ties_with_mergekits_rule_from_the_cli(filled, tmp_path):
    out = tmp_path / "o.safetensors"
    _invoke(filled, "compose", "0.6*sentiment + 0.4*topic", "--method", "ties", "--density",
            "0.5", "--rule", "mergekit", "-o", str(out))
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        recipe = json.loads(f.metadata()["tvreg.recipe"])
    assert recipe["method"] == {"method": "ties", "density": 0.5, "trim": "tensor",
                                "majority_sign": "total", "rule": "mergekit",
                                "normalize": True, "rescale": False}
    peft = filled.resolve("0.6*sentiment + 0.4*topic", method="ties", density=0.5).state_dict()
    mk = filled.resolve("0.6*sentiment + 0.4*topic", method="ties", density=0.5,
                        rule="mergekit").state_dict()
    assert any(not torch.equal(peft[n], mk[n]) for n in peft)  # another rule, another result
