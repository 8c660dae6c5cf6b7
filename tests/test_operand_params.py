"""Per-operand and per-layer merge parameters from Python and recipe files (issue 17, item 3).

A small BERT-named model (5 layers ``encoder.layer.N.``) with continuous random fine-tunes (no
magnitudes tied at a trim cut), so results are compared exactly with peft's own functions and
with formulas written out here. mergekit's semantics (rule=mergekit) are checked against
mergekit itself in tests/test_mergekit.py.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import tvreg
from tvreg.compose.merge import dare_mask
from tvreg.compose.settings import evaluate_setting, layer_positions
from tvreg.errors import InvalidInput

LAYERS = 5


def _base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {"embeddings.word.weight": torch.randn(32, 16, generator=g)}
    for i in range(LAYERS):
        sd[f"encoder.layer.{i}.attention.weight"] = torch.randn(16, 16, generator=g)
        sd[f"encoder.layer.{i}.output.bias"] = torch.randn(16, generator=g)
    return sd


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bertish")
    base = _base()
    save_file(base, str(root / "base.safetensors"))
    paths = []
    for k in range(3):
        g = torch.Generator().manual_seed(10 + k)
        ft = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in base.items()}
        save_file(ft, str(root / f"ft{k}.safetensors"))
        paths.append(str(root / f"ft{k}.safetensors"))
    return str(root / "base.safetensors"), paths


@pytest.fixture()
def vreg(tmp_path, ckpts):
    base, fts = ckpts
    reg = tvreg.open(str(tmp_path / "registry"))
    reg.add_base(base, name="bertish")
    for k, p in enumerate(fts):
        reg.create(f"t{k}", base, p, similarities=False)
    return reg


def _deltas(reg, name):
    return [reg.get(f"t{k}").tensor(name) for k in range(3)]


def _t(name: str) -> float:
    """The layer position written out: layer i of 5 at i/4, the embeddings at 0."""
    for i in range(LAYERS):
        if f".layer.{i}." in name:
            return i / (LAYERS - 1)
    return 0.0


def test_layer_positions_for_common_naming_schemes():
    for fmt in ("model.layers.{}.mlp.weight", "encoder.layer.{}.output.dense.weight",
                "transformer.h.{}.attn.c_attn.weight", "decoder.block.{}.layer.0.weight",
                "visual.transformer.resblocks.{}.attn.in_proj_weight", "blocks.{}.norm1.weight"):
        names = ["embed.weight", *(fmt.format(i) for i in range(4)), "final_norm.weight"]
        pos = layer_positions(names)
        assert [pos[fmt.format(i)] for i in range(4)] == [0.0, 1 / 3, 2 / 3, 1.0], fmt
        assert pos["embed.weight"] == pos["final_norm.weight"] == 0.0
    assert layer_positions(["layers.0.w"]) == {"layers.0.w": 1.0}  # one layer: mergekit's 1
    assert evaluate_setting("x", [0.0, 1.0, 3.0], 0.75) == pytest.approx(2.0)
    assert evaluate_setting("a.mlp.w", [{"filter": "attn", "value": 1}, {"value": [2, 4]}],
                            0.5) == pytest.approx(3.0)


def test_ties_per_operand_density_gradient_equals_peft(vreg):
    """tvreg's (peft's) TIES with each operand's density from its own setting: operand 0 a
    gradient over the layers, operand 1 a number, operand 2 the top-level filtered value."""
    from peft.utils.merge_utils import (
        calculate_majority_sign_mask,
        disjoint_merge,
        magnitude_based_pruning,
    )

    comp = vreg.resolve(
        "t0 + 0.5*t1 + t2", method="ties",
        density=[{"filter": "attention", "value": 0.55}, {"value": 0.8}],
        operand_params={"t0": {"density": [0.3, 0.8]}, "t1": {"density": 0.65,
                                                              "weight": [1.0, 3.0]}})
    got = comp.state_dict()
    for name, merged in got.items():
        t = _t(name)
        dens = [0.3 + 0.5 * t, 0.65, 0.55 if "attention" in name else 0.8]
        weights = [1.0, 0.5 * (1.0 + 2.0 * t), 1.0]
        trimmed = torch.stack([magnitude_based_pruning(d, k)
                               for d, k in zip(_deltas(vreg, name), dens)])
        mask = calculate_majority_sign_mask(trimmed, method="total")
        w = torch.tensor(weights).view(-1, *([1] * (trimmed.dim() - 1)))
        expected = disjoint_merge(trimmed * w, mask)
        torch.testing.assert_close(merged, expected, rtol=1e-6, atol=1e-9)
    # a saved composition reproduces from its recipe, and its YAML merges to the same vector
    saved = vreg.save_composition("m", comp, similarities=False)
    assert vreg.reproduce(saved.ref).ok
    plan = vreg.merge_config(yaml.safe_load(vreg.recipe_yaml(saved.ref)))
    try:
        again = dict(plan.composition.iter_tensors())
    finally:
        plan.close()
    assert all(torch.equal(again[n], got[n]) for n in got)


def test_dare_and_task_arithmetic_per_layer(vreg):
    comp = vreg.resolve("t0 - t1", method="dare_linear", seed=7,
                        operand_params={0: {"density": [0.4, 0.9]}, 1: {"density": 0.5}})
    for name, merged in comp.state_dict().items():
        d0, d1 = 0.4 + 0.5 * _t(name), 0.5
        a, b, _ = _deltas(vreg, name)
        expected = a * dare_mask(7, name, 0, a.shape, d0) / d0 \
            - b * dare_mask(7, name, 1, b.shape, d1) / d1
        torch.testing.assert_close(merged, expected, rtol=1e-6, atol=1e-9)
    # task arithmetic: the coefficient times the operand's weight at its layer
    comp = vreg.resolve("2*t0 + t2", operand_params={"t0": {"weight": [0.0, 1.0]},
                                                     "t2": {"weight": [{"filter": "bias",
                                                                        "value": 0.0},
                                                                       {"value": 0.5}]}})
    for name, merged in comp.state_dict().items():
        a, _, c = _deltas(vreg, name)
        expected = 2 * _t(name) * a + (0.0 if "bias" in name else 0.5) * c
        torch.testing.assert_close(merged, expected, rtol=1e-6, atol=1e-9)


def test_spectral_method_with_layer_weights(vreg):
    """iso_c with per-layer weights: each tensor merged with the weights of its layer."""
    from tvreg.compose.merge import MergeParams, merge_tensor

    comp = vreg.resolve("t0 + t1", method="iso_c", operand_params={"t1": {"weight": [1, 0.2]}})
    for name, merged in comp.state_dict().items():
        expected = merge_tensor(MergeParams("iso_c"), _deltas(vreg, name)[:2],
                                [1.0, 1.0 + (0.2 - 1.0) * _t(name)])
        assert torch.equal(merged, expected), name
    assert comp.recipe["parameters"]["models"][1] == {"weight": [1, 0.2]}


def test_recipe_file_with_tvreg_rules(vreg, ckpts, tmp_path):
    """A recipe file with tvreg.rule peft takes per-model densities and layer gradients, the
    same composition as the Python API's; saving either gives one version."""
    config = {"merge_method": "ties", "base_model": "bertish",
              "models": [{"model": "t0", "parameters": {"weight": 0.5, "density": [0.3, 0.8]}},
                         {"model": "t1", "parameters": {"weight": [1.0, 0.0]}}],
              "parameters": {"density": 0.6}, "tvreg": {"rule": "peft"}}
    plan = vreg.merge_config(config)
    try:
        from_file = dict(plan.composition.iter_tensors())
    finally:
        plan.close()
    comp = vreg.resolve("0.5*t0 + t1", method="ties", density=0.6,
                        operand_params={"t0": {"density": [0.3, 0.8]},
                                        "t1": {"weight": [1.0, 0.0]}})
    ours = comp.state_dict()
    assert all(torch.equal(from_file[n], ours[n]) for n in ours)
    out = tmp_path / "m.safetensors"
    vreg.apply(comp, ckpts[0], str(out))
    assert load_file(str(out)).keys() == _base().keys()


@pytest.mark.parametrize("kwargs, word", [
    (dict(operand_params={"nosuch": {"weight": 1}}), "not an operand"),
    (dict(operand_params={5: {"weight": 1}}), "operand"),
    (dict(method="ties", density=0.5, operand_params={"t0": {"gamma": 0.1}}), "gamma"),
    (dict(operand_params={"t0": {"density": 0.5}}), "density"),
    (dict(method="ties", density=[0.5, 1.5]), "density must be in (0, 1]"),
    (dict(method="ties", density=[]), "empty list"),
    (dict(method="ties", density=[0.5, {"value": 1}]), "not both"),
    (dict(method="ties", density=0.5, operand_params={"t0": {"weight": True}}), "number"),
    (dict(method="ties", density=0.5, operand_params={"t0": {"weight": float("nan")}}),
     "finite"),
    (dict(method="ties", density=0.5, operand_params={"t0": {"weight": {"x": 1}}}), "filter"),
    (dict(method="ties", operand_params={"t0": {"density": 0.5}}), "no density"),
    (dict(method="ties", density=[{"filter": "attention", "value": 0.5}]), "no density"),
    (dict(method="ties", density=0.5, trim="global", operand_params={"t1": {"density": 0.4}}),
     "trim=global"),
    (dict(method="task_arithmetic", density=[0.2, 0.4]), "density"),
    (dict(method="iso_c", common_fraction=[0.5]), "cannot vary"),
    (dict(operand_params=[("t0", {})]), "must map"),
])
def test_bad_settings_refused_before_reading(vreg, monkeypatch, kwargs, word):
    """Every bad value is one InvalidInput at resolve time: no tensor is read."""
    def no_reads(*a, **k):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(vreg.repo, "load_tensor", no_reads)
    with pytest.raises(InvalidInput) as e:
        vreg.resolve("t0 + t1", **kwargs)
    assert word in str(e.value), str(e.value)


def test_recipe_file_refuses_keys_the_method_does_not_read(vreg):
    config = {"merge_method": "ties", "models": [
        {"model": "t0", "parameters": {"weight": 1, "density": 0.5, "gamma": 0.1}}],
        "tvreg": {"rule": "peft"}}
    with pytest.raises(InvalidInput, match="gamma"):
        vreg.merge_config(config)
