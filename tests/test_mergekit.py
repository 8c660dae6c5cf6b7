"""tvreg merge against mergekit 0.1.5's own output on a tiny Llama (issue 16, items 4 and 5)."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch
import yaml
from click.testing import CliRunner

pytest.importorskip("mergekit")
transformers = pytest.importorskip("transformers")

import tvreg  # noqa: E402
from tvreg.cli.main import cli  # noqa: E402
from tvreg.tensors.checkpoints import open_checkpoint  # noqa: E402


def _tiny_llama(path, seed):
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and three fine-tunes (a few real AdamW steps on random tokens each)."""
    root = tmp_path_factory.mktemp("llama")
    base = _tiny_llama(root, 0)
    base.save_pretrained(root / "base")
    paths = []
    for k in range(3):
        model = _tiny_llama(root, 0)
        model.load_state_dict(base.state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(100 + k)
        for _ in range(3):
            ids = torch.randint(0, 128, (2, 16), generator=gen)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        model.save_pretrained(root / f"ft{k}")
        paths.append(str(root / f"ft{k}"))
    return str(root / "base"), paths


@contextlib.contextmanager
def _stable_argsort():
    """mergekit's magnitude trim with its ``torch.argsort`` made stable: tvreg's tie rule at the
    trim cut (the lowest positions first; merge_kernels.py)."""
    import mergekit.sparsify

    class Torch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def argsort(x, descending=False):
            return torch.argsort(x, descending=descending, stable=True)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mergekit.sparsify, "torch", Torch())
        yield


def _mergekit(config: dict, out: str) -> dict[str, torch.Tensor]:
    """mergekit's own run_merge; ties at a trim cut broken as tvreg does (_stable_argsort)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    with _stable_argsort():
        run_merge(MergeConfiguration.model_validate(config), out,
                  MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    return _read(out)


def _read(path: str) -> dict[str, torch.Tensor]:
    with open_checkpoint(path) as ck:
        return {n: ck.tensor(n).clone() for n in ck.names()}


def _tvreg(reg, config: dict, out: str) -> dict[str, torch.Tensor]:
    plan = reg.merge_config(config)
    try:
        reg.write_merge(plan, out)
    finally:
        plan.close()
    return _read(out)


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def _config(method, base, fts, params=None, top=None):
    models = [{"model": p, "parameters": dict(params[i]) if params else {"weight": 1.0}}
              for i, p in enumerate(fts)]
    doc = {"merge_method": method, "base_model": base, "models": models, "dtype": "float32"}
    if top:
        doc["parameters"] = top
    return doc


@pytest.fixture()
def reg(tmp_path):
    return tvreg.open(str(tmp_path / "registry"))


CASES = {
    # method, per-model params, top-level params, tolerance (0: bit for bit)
    "task_arithmetic": ("task_arithmetic", [{"weight": 0.7}, {"weight": 0.4}, {"weight": -0.2}],
                        {"lambda": 0.9}, 0.0),
    "ta_normalize_gradient_filter": (
        "task_arithmetic",
        [{"weight": [0.2, 1.0]}, {"weight": [{"filter": "self_attn", "value": 0.5},
                                             {"value": 0.3}]}, {"weight": 0.25}],
        {"normalize": True}, 0.0),
    "ties": ("ties", [{"weight": 0.6, "density": 0.5}, {"weight": 0.3, "density": 0.7},
                      {"weight": 0.5, "density": [0.3, 0.9]}], {"int8_mask": True}, 0.0),
    "dare_ties_density1": ("dare_ties", [{"weight": 0.5}, {"weight": 0.7}, {"weight": 0.2}],
                           None, 0.0),
    "dare_linear_density1": ("dare_linear", [{"weight": 0.5}, {"weight": 0.7}, {"weight": 0.2}],
                             {"normalize": True}, 0.0),
    # linear is a weighted average of full weights in mergekit, base + Σwτ/Σw in tvreg
    # (mergekit averages base_model too: its weight is the top-level one)
    "linear": ("linear", [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}], {"weight": 0.1},
               1e-6),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_mergekit(models, reg, tmp_path, case):
    method, params, top, tol = CASES[case]
    base, fts = models
    config = _config(method, base, fts, params, top)
    theirs = _mergekit(config, str(tmp_path / "mk"))
    ours = _tvreg(reg, config, str(tmp_path / "ours.safetensors"))
    diff = _max_diff(ours, theirs)
    print(f"{case}: max abs difference {diff:g}")
    assert diff <= tol, (case, diff)


def test_dare_statistics(models, reg, tmp_path):
    """DARE's masks come from different RNGs: compare what is kept, not which entries."""
    base, fts = models
    config = _config("dare_linear", base, fts[:1], [{"weight": 1.0, "density": 0.5}],
                     {"rescale": False})
    theirs = _mergekit(config, str(tmp_path / "mk"))
    ours = _tvreg(reg, config, str(tmp_path / "ours.safetensors"))
    b = _read(os.path.join(base, "model.safetensors"))
    n = "model.layers.0.mlp.up_proj.weight"
    kept_ours = float(((ours[n] - b[n]) != 0).float().mean())
    kept_theirs = float(((theirs[n] - b[n]) != 0).float().mean())
    assert abs(kept_ours - 0.5) < 0.05 and abs(kept_theirs - 0.5) < 0.05
    ft = _read(os.path.join(fts[0], "model.safetensors"))
    keep = (ours[n] - b[n]) != 0  # every kept entry is the fine-tune's exact delta
    assert torch.equal((ours[n] - b[n])[keep], (ft[n] - b[n])[keep])


def test_registry_refs_save_recipe_reproduce(models, reg, tmp_path):
    base, fts = models
    runner = CliRunner()

    def invoke(*args, code=0):
        r = runner.invoke(cli, ["--registry", reg.root, *args], catch_exceptions=False)
        assert r.exit_code == code, r.output
        return r

    reg.add_base(base, name="llama")
    for k, p in enumerate(fts[:2]):
        reg.create(f"t{k}", base, p)
    config = {"merge_method": "ties", "base_model": "llama",
              "models": [{"model": "t0", "parameters": {"weight": 0.6, "density": 0.5}},
                         {"model": fts[1], "parameters": {"weight": 0.4, "density": 0.6}}],
              "dtype": "float32"}
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump(config))
    # a checkpoint model against a stored base: equal to mergekit's with paths
    invoke("merge", str(cfg), "-o", str(tmp_path / "a.safetensors"))
    theirs = _mergekit(dict(config, base_model=base,
                            models=[dict(config["models"][0], model=fts[0]),
                                    config["models"][1]]), str(tmp_path / "mk"))
    assert _max_diff(_read(str(tmp_path / "a.safetensors")), theirs) == 0.0
    # registry refs only, saved, shown as a recipe, merged again: the same version
    config["models"][1]["model"] = "t1"
    cfg.write_text(yaml.safe_dump(config))
    ref = invoke("merge", str(cfg), "--save", "m", "--no-similarities").stdout.strip()
    vid = reg.show(ref)["vector_id"]
    text = invoke("show", ref, "--recipe").stdout
    assert "merge_method: ties" in text and "# t0@1" in text
    again = tmp_path / "again.yml"
    again.write_text(text)
    assert invoke("merge", str(again), "--save", "m", "--no-similarities").stdout.strip() == ref
    assert invoke("reproduce", ref).stdout.strip() == vid
    # a tvreg composition (peft rules) round-trips through its recipe too
    comp = reg.resolve("0.5*t0 + t1", method="dare_ties", density=0.5, seed=3)
    saved = reg.save_composition("c", comp, similarities=False)
    text = invoke("show", saved.ref, "--recipe").stdout
    again.write_text(text)
    assert invoke("merge", str(again), "--save", "c", "--no-similarities").stdout.strip() \
        == saved.ref
    assert invoke("reproduce", saved.ref).stdout.strip() == saved.record.vector_id
    assert json.loads(invoke("reproduce", saved.ref, "--json").stdout)["ok"]
    invoke("reproduce", "t0", code=2)


@pytest.mark.parametrize("patch, word", [
    ({"slices": []}, "slices"), ({"chat_template": "x"}, "chat_template"),
    ({"tokenizer": {"source": "union"}}, "tokenizer"), ({"frobnicate": 1}, "frobnicate"),
    ({"tokenizer_source": "union"}, "union"), ({"merge_method": "multislerp"}, "multislerp"),
    ({"merge_method": "nope"}, "nope"),
])
def test_refused(models, reg, tmp_path, patch, word):
    base, fts = models
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump(dict(_config("ties", base, fts[:1]), **patch)))
    out = tmp_path / "out.safetensors"
    r = CliRunner().invoke(cli, ["--registry", reg.root, "merge", str(cfg), "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert word in r.output and not out.exists()


def test_bad_ref(models, reg, tmp_path):
    base, _ = models
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump(_config("task_arithmetic", base, ["nosuch"])))
    r = CliRunner().invoke(cli, ["--registry", reg.root, "merge", str(cfg), "-o",
                                 str(tmp_path / "o.safetensors")])
    assert r.exit_code == 2 and "nosuch" in r.output


def test_hf_output_and_checkpoint_save(models, reg, tmp_path):
    """--format hf (the default without .safetensors) writes a folder transformers loads;
    a merge of checkpoints saved as a version keeps them out of its parents."""
    base, fts = models
    config = _config("task_arithmetic", base, fts[:2], [{"weight": 0.5}, {"weight": 0.5}])
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "merged"
    r = CliRunner().invoke(cli, ["--registry", reg.root, "merge", str(cfg), "-o", str(out),
                                 "--save", "ck", "--no-similarities"])
    assert r.exit_code == 0, r.output
    theirs = _mergekit(config, str(tmp_path / "mk"))
    model = transformers.LlamaForCausalLM.from_pretrained(str(out))
    sd = model.state_dict()
    assert max(float((sd[n] - theirs[n]).abs().max()) for n in theirs) == 0.0
    info = reg.show("ck")
    assert info["parents"] == [] and info["recipe"]["parameters"]["models"][0] == {"weight": 0.5}
    r = CliRunner().invoke(cli, ["--registry", reg.root, "reproduce", "ck"])
    assert r.exit_code == 2 and "checkpoint" in r.output


def test_trim_ties_at_the_cut_as_mergekit():
    """Entries tied at the trim cut: tvreg keeps those at the lowest positions (the first k of a
    stable sort), mergekit those its unstable argsort puts first. With mergekit's argsort made
    stable the trims are equal bit for bit; with its own they differ only at tied entries."""
    from mergekit.sparsify import RescaleNorm, magnitude

    from tvreg.compose.merge import _l1_rescaled, _mergekit_magnitude

    gen = torch.Generator().manual_seed(0)
    t = torch.randint(-30, 31, (400, 24), generator=gen).float() * 0.125  # many equal |x|
    seen = 0
    for density in (0.1, 0.33, 0.5, 0.9):
        ours = _mergekit_magnitude(t, density)
        theirs = magnitude(t, density)
        k = max(1, int(density * t.numel()))
        cut = torch.kthvalue(t.abs().reshape(-1), t.numel() - k + 1).values
        differ = ours != theirs
        assert bool((t.abs()[differ] == cut).all())
        assert int((ours != 0).sum()) == int((theirs != 0).sum())
        seen += int(differ.sum())
        with _stable_argsort():
            assert torch.equal(ours, magnitude(t, density))
            assert torch.equal(_l1_rescaled(t, ours), magnitude(t, density, RescaleNorm.l1))
    assert seen  # the unstable argsort did pick other tied entries


def test_default_recipes_unchanged():
    """The new options at their defaults leave the recipe JSON as it was."""
    from tvreg.compose.merge import MergeParams

    assert MergeParams("ties", density=0.5).to_json() == {
        "method": "ties", "density": 0.5, "trim": "tensor", "majority_sign": "total"}
    assert MergeParams().to_json() == {"method": "task_arithmetic"}
    p = MergeParams("dare_ties", rule="mergekit")
    assert (p.density, p.normalize, p.rescale) == (1.0, False, True)
    assert MergeParams.from_json(p.to_json()) == p


def test_bad_output_saves_nothing(models, reg, tmp_path):
    """The output is checked before --save stores anything: a registry left exactly as it was."""
    from helpers import snapshot

    base, fts = models
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump(_config("task_arithmetic", base, fts[:1])))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("mine")
    reg.init()
    before = snapshot(reg.root)
    for args, word in [(["-o", str(full)], "is not empty"),
                       (["-o", str(tmp_path / "o"), "--shard-size", "1 parsec"], "invalid size"),
                       (["-o", str(tmp_path / "o.safetensors"), "--force"], "--format hf")]:
        r = CliRunner().invoke(cli, ["--registry", reg.root, "merge", str(cfg), *args,
                                     "--save", "m", "--no-similarities"])
        assert r.exit_code == 2 and word in r.output, r.output
        assert snapshot(reg.root) == before


def test_hf_output_has_the_model_card(models, reg, tmp_path):
    base, fts = models
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump(_config("ties", base, fts[:2], [
        {"weight": 0.5, "density": 0.5}, {"weight": 0.5, "density": 0.7}])))
    out = tmp_path / "merged"
    r = CliRunner().invoke(cli, ["--registry", reg.root, "merge", str(cfg), "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text[4:].split("\n---\n", 1)[0])
    assert front["base_model_relation"] == "merge" and front["tags"][:2] == ["tvreg", "merge"]
    assert "ties" in text


# --- per-operand and per-layer parameters from Python (issue 17, item 3) ------------------------

#: a mergekit config's models[i].parameters and top-level parameters, and the same values as
#: Registry.resolve's keywords and operand_params (operands t0, t1, t2 = the fine-tunes)
PYTHON_CASES = {
    "ties_gradients": (
        "ties", [{"weight": 0.6, "density": [0.3, 0.9]},
                 {"weight": [{"filter": "mlp", "value": 0.2}, {"value": 0.5}], "density": 0.7},
                 {"weight": [1.0, 0.25, 0.5]}],
        {"density": [{"filter": "self_attn", "value": 0.4}, {"value": 0.8}]}),
    "breadcrumbs_gamma": (
        "breadcrumbs", [{"weight": 0.5, "density": 0.8, "gamma": [0.0, 0.1]},
                        {"weight": 0.7, "gamma": 0.05}, {"weight": [0.1, 0.3]}],
        {"density": 0.9, "gamma": 0.02}),
    "task_arithmetic_filters": (
        "task_arithmetic", [{"weight": [{"filter": "embed", "value": 0.0}, {"value": 1.0}]},
                            {"weight": [0.0, 1.0]}, {"weight": -0.3}], {}),
}


@pytest.mark.parametrize("case", sorted(PYTHON_CASES))
def test_python_operand_params_equal_mergekit(models, reg, tmp_path, case):
    """reg.resolve(..., operand_params=...) with values per operand, over the layers and by
    tensor name equals mergekit's run_merge of the config that gives the same values."""
    method, params, top = PYTHON_CASES[case]
    base, fts = models
    reg.add_base(base, name="llama")  # where the recipe's merge is written onto
    for k, p in enumerate(fts):
        reg.create(f"t{k}", base, p, similarities=False)
    # the weights in operand_params multiply the expression's coefficients: 2*t0 with weight
    # w/2 is mergekit's weight w
    from tvreg.compose.settings import scaled_setting

    halved = dict(params[0], weight=scaled_setting(params[0]["weight"], 0.5))
    comp = reg.resolve("2*t0 + t1 + t2", method=method, rule="mergekit",
                       operand_params={"t0": halved, 1: params[1], "t2": params[2]}, **top)
    out = str(tmp_path / "ours.safetensors")
    reg.apply(comp, base, out)
    theirs = _mergekit(_config(method, base, fts, params, top), str(tmp_path / "mk"))
    assert _max_diff(_read(out), theirs) == 0.0
    # kept in the recipe: saved, shown as mergekit YAML, merged again and reproduced
    saved = reg.save_composition("m", comp, similarities=False)
    assert saved.record.recipe["parameters"]["models"][0]["weight"] == params[0]["weight"]
    assert reg.reproduce(saved.ref).ok
    cfg = tmp_path / "again.yml"
    cfg.write_text(reg.recipe_yaml(saved.ref))
    plan = reg.merge_config(str(cfg))
    try:
        reg.write_merge(plan, str(tmp_path / "again.safetensors"))
    finally:
        plan.close()
    assert _max_diff(_read(str(tmp_path / "again.safetensors")), theirs) == 0.0


def test_layer_positions_follow_the_llama_layers(models, reg):
    """t runs over the model's decoder layers as in mergekit: layer i of n at i/(n-1), the
    embeddings, final norm and head at 0."""
    from tvreg.compose.settings import layer_positions

    base, _ = models
    names = list(_read(base))
    pos = layer_positions(names)
    assert {pos[n] for n in names if ".layers.0." in n} == {0.0}
    assert {pos[n] for n in names if ".layers.1." in n} == {1.0}
    assert pos["model.embed_tokens.weight"] == pos["model.norm.weight"] == 0.0
