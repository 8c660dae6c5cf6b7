"""export --format peft: a real tiny BERT, a real registry, adapters loaded back with PEFT."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

LINEAR = r"attention|intermediate|output\.dense"


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=48,
                                  max_position_embeddings=32)
    base = transformers.BertModel(cfg).eval()
    base.save_pretrained(d / "base")
    ft = copy.deepcopy(base)
    with torch.no_grad():
        for n, p in ft.named_parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in ft.state_dict().items()}
    save_file(sd, d / "ft.safetensors")
    return d, base, ft


def _merged(base, out):
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out))
    return model.merge_and_unload().state_dict()


def _check_full(base, ft, merged, report):
    carried = {m["module"] + ".weight" for m in report["modules"]}
    b, f = base.state_dict(), ft.state_dict()
    assert carried and all("embed" not in n for n in carried)
    for n in b:
        if n in carried:
            assert torch.allclose(merged[n], f[n], atol=1e-5), n
        else:
            assert torch.equal(merged[n], b[n]), n


def test_full_rank_and_truncated(reg, bert, tmp_path):
    d, base, ft = bert
    reg.create("ft", d / "base" / "model.safetensors", d / "ft.safetensors", similarities=False)
    rep = reg.export_peft("ft", tmp_path / "full", rank=32)
    _check_full(base, ft, _merged(base, tmp_path / "full"), rep)
    assert rep["rel_error_modules"] < 1e-5
    names = {x["name"]: x["why"] for x in rep["not_carried"]}
    assert names["embeddings.word_embeddings.weight"] == "embedding"
    assert names["embeddings.LayerNorm.weight"] == "not 2-D"
    assert 0 < rep["not_carried_share"] < 1
    # rank 32 module cap: attention 32x32 full, intermediate 48x32 capped at 32 -> one rank
    cfg = json.loads((tmp_path / "full" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] is None
    assert not cfg["use_rslora"] and cfg["r"] == 32
    # low rank: the reported error is the real one
    rep4 = reg.export_peft("ft", tmp_path / "r4", rank=4, include=r"attention\.self")
    tensors = load_file(tmp_path / "r4" / "adapter_model.safetensors")
    tau = reg.get("ft").tensors()
    for m in rep4["modules"]:
        a = tensors[f"base_model.model.{m['module']}.lora_A.weight"].double()
        b = tensors[f"base_model.model.{m['module']}.lora_B.weight"].double()
        assert a.shape[0] == 4 == m["rank"]
        t = tau[m["module"] + ".weight"].double()
        err = float(torch.linalg.norm(t - b @ a) / torch.linalg.norm(t))
        assert err == pytest.approx(m["rel_error"], rel=1e-6)
        s = torch.linalg.svdvals(t)
        assert err == pytest.approx(float(s[4:].norm() / s.norm()), rel=1e-4)
    merged = _merged(base, tmp_path / "r4")
    assert set(m["module"] for m in rep4["modules"]) == {
        f"encoder.layer.{i}.attention.self.{k}" for i in range(2) for k in ("query", "key", "value")}
    # energy: the smallest rank keeping the fraction, per module; rank_pattern when they differ
    rep_e = reg.export_peft("ft", tmp_path / "e", energy=0.9)
    for m in rep_e["modules"]:
        s2 = torch.linalg.svdvals(tau[m["module"] + ".weight"].double()) ** 2
        kept = torch.cumsum(s2, 0) / s2.sum()
        assert m["rank"] == int((kept < 0.9 * (1 - 1e-12)).sum()) + 1
    cfg = json.loads((tmp_path / "e" / "adapter_config.json").read_text())
    assert len(set(rep_e["ranks"])) > 1 and cfg["rank_pattern"]
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "e"))
    tensors = load_file(tmp_path / "e" / "adapter_model.safetensors")
    merged = model.merge_and_unload().state_dict()
    for m in rep_e["modules"]:
        a = tensors[f"base_model.model.{m['module']}.lora_A.weight"]
        b = tensors[f"base_model.model.{m['module']}.lora_B.weight"]
        n = m["module"] + ".weight"
        assert torch.allclose(merged[n], base.state_dict()[n] + b @ a, atol=1e-6), n
    del merged


def _adapter(base, out, seed, r, target):
    cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=target, lora_dropout=0.0)
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(out)
    return model


def test_lora_round_trip_and_sum(reg, bert, tmp_path):
    d, base, _ = bert
    base_file = d / "base" / "model.safetensors"
    _adapter(base, tmp_path / "a1", 1, 4, ["query", "value"])
    _adapter(base, tmp_path / "a2", 2, 2, ["query", "value"])
    reg.create("l1", base_file, lora=tmp_path / "a1", similarities=False)
    reg.create("l2", base_file, lora=tmp_path / "a2", similarities=False)
    rep = reg.export_peft("l1", tmp_path / "o1", rank=32)
    orig = load_file(tmp_path / "a1" / "adapter_model.safetensors")
    out = load_file(tmp_path / "o1" / "adapter_model.safetensors")
    assert set(orig) == set(out)
    for k in orig:
        assert torch.equal(orig[k], out[k]), k
    cfg = json.loads((tmp_path / "o1" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["rank_pattern"] == {}
    assert all(m["exact_factors"] for m in rep["modules"])
    # task arithmetic of two imports: rank r1 + r2, exact
    rep = reg.export_peft("0.5*l1 + l2", tmp_path / "sum", rank=32)
    assert rep["ranks"] == [6] and rep["rel_error_modules"] < 1e-6
    merged = _merged(base, tmp_path / "sum")
    want = reg.resolve("0.5*l1 + l2").state_dict()
    for n, t in want.items():
        assert torch.allclose(merged[n], base.state_dict()[n] + t, atol=1e-6), n
    # a saved composition: from its recipe's operands' factors
    reg.save_composition("s", reg.resolve("0.5*l1 + l2"), similarities=False)
    rep_s = reg.export_peft("s", tmp_path / "saved", rank=32)
    assert rep_s["ranks"] == [6] and all(m["exact_factors"] for m in rep_s["modules"])
    # truncated below the stored rank: QR + SVD of the product
    rep3 = reg.export_peft("0.5*l1 + l2", tmp_path / "t3", rank=3)
    assert rep3["ranks"] == [3] and rep3["rel_error_modules"] > 0
    # every folder has a model card: an adapter of its (named) base, its operands
    import yaml

    reg.name_base(reg.get("l1").base_hash[:12], "org/tiny-bert")
    reg.export_peft("0.5*l1 + l2", tmp_path / "carded", rank=3)
    text = (tmp_path / "carded" / "README.md").read_text()
    front = yaml.safe_load(text[4:].split("\n---\n", 1)[0])
    assert front == {"base_model": "org/tiny-bert", "base_model_relation": "adapter",
                     "library_name": "peft", "tags": ["tvreg", "lora", "task-vector"]}
    assert reg.get("l1").vector_id in text and reg.get("l2").vector_id in text
    cfg = json.loads((tmp_path / "carded" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "org/tiny-bert"


def test_cli(run, reg, bert, tmp_path):
    d, base, _ = bert
    reg.create("ft", d / "base" / "model.safetensors", d / "ft.safetensors", similarities=False)
    res = run("export", "ft", "--format", "peft", "--rank", "8", "-o", str(tmp_path / "o"),
              "--json")
    report = json.loads(res.stdout)
    assert report["ranks"] == [8] and "MODULE" in res.stderr
    full = tmp_path / "full"
    (full / "x").mkdir(parents=True)
    bad = [("--rank", "0"), ("--rank", "-1"), ("--rank", "33"), ("--energy", "0"),
           ("--energy", "1.5"), (), ("--rank", "4", "--energy", "0.5"),
           ("--rank", "4", "--include", "nothing-matches")]
    for args in bad:
        out = tmp_path / "bad"
        res = run("export", "ft", "--format", "peft", *args, "-o", str(out), code=2)
        assert not out.exists(), args
        assert len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)
    run("export", "ft", "--format", "peft", "--rank", "4", "-o", str(full), code=2)
    assert sorted(p.name for p in full.iterdir()) == ["x"]
    run("export", "ft", "--format", "peft", "--rank", "4", "-o", str(full), "--force")
    assert sorted(p.name for p in full.iterdir()) == ["README.md", "adapter_config.json",
                                                      "adapter_model.safetensors"]
    # no 2-D tensor to adapt
    reg.create("bias", d / "base" / "model.safetensors", d / "ft.safetensors",
               include=r"bias$", similarities=False)
    run("export", "bias", "--format", "peft", "--rank", "4", "-o", str(tmp_path / "b"), code=2)
    assert not (tmp_path / "b").exists()


def test_unknown_ref_and_expression(run, reg, bert, tmp_path):
    d, _, _ = bert
    reg.create("ft", d / "base" / "model.safetensors", d / "ft.safetensors", similarities=False)
    for ref in ("nope", "0.5*ft + nope"):
        run("export", ref, "--format", "peft", "--rank", "4", "-o", str(tmp_path / "o"), code=2)
        assert not (tmp_path / "o").exists()
    rep = json.loads(run("export", "2*ft", "--format", "peft", "--rank", "32", "--include",
                         r"query", "-o", str(tmp_path / "o"), "--json").stdout)
    assert rep["rel_error_modules"] < 1e-5 and len(rep["modules"]) == 2
    run("export", "ft", "--rank", "4", "-o", str(tmp_path / "x.safetensors"), code=2)
