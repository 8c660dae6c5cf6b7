"""LoRA import: a real PEFT adapter, trained on a real toy task, stored as a task vector; base +
vector equals PEFT's own merge_and_unload()."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import snapshot
from safetensors.torch import load_file, save_file

import tvreg
from tvreg.errors import CheckpointError, IncompatibleCheckpoints
from tvreg.testing import toy

peft = pytest.importorskip("peft")


def _train_adapter(base_model, out_dir, *, use_rslora=False, fan_in_fan_out=False, **config):
    """LoRA on the MLP (rank and alpha per module through the patterns), 8 real Adam steps."""
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], lora_dropout=0.0,
                          rank_pattern={"fc2": 2}, alpha_pattern={"fc2": 3},
                          use_rslora=use_rslora, fan_in_fan_out=fan_in_fan_out, **config)
    model = peft.get_peft_model(copy.deepcopy(base_model), cfg)
    with toy._controlled(1):
        toy._train(model, "topic", 8, 1e-2, 32, toy._generator("lora", "topic"))
    model.save_pretrained(out_dir)
    return model


@pytest.fixture(scope="module")
def lora_zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    base_model = toy.pretrain(width=32, steps=5)
    base = toy.save_safetensors(base_model, d / "base.safetensors")
    plain = _train_adapter(base_model, d / "adapter")
    rs = _train_adapter(base_model, d / "adapter-rslora", use_rslora=True)
    merged = {k: v.clone() for k, v in plain.merge_and_unload().state_dict().items()}
    merged_rs = {k: v.clone() for k, v in rs.merge_and_unload().state_dict().items()}
    return d, base, base_model, merged, merged_rs


@pytest.mark.parametrize("adapter, which", [("adapter", 3), ("adapter-rslora", 4)])
def test_base_plus_imported_vector_equals_peft_merge(reg, lora_zoo, adapter, which):
    d, base, base_model, *merges = lora_zoo
    merged = merges[which - 3]
    res = reg.create("lora", base, lora=d / adapter, task="topic", similarities=False)
    vec = reg.get(res.ref).tensors()
    base_sd = base_model.state_dict()
    changed = set()
    for name in vec.keys():
        delta = vec[name]
        if not bool((delta == 0).all()):
            changed.add(name)
        # PEFT merges in fp32 (B@A then scale); tvreg rounds the float64 product once
        assert torch.allclose(base_sd[name] + delta, merged[name], rtol=0, atol=2e-6), name
    assert changed == {"mlp.fc1.weight", "mlp.fc2.weight"}
    # the adapted tensors are stored as their factors, and decode bit-exactly (sha256 checked)
    labels = {t.name: t.codecs.label for t in res.manifest.tensors}
    # the factors' bytes go through the lossless pipeline chosen for them (bgzstd)
    assert labels["mlp.fc1.weight"].startswith("lowrank4+bgzstd4:")
    assert labels["mlp.fc2.weight"].startswith("lowrank2+bgzstd4:")
    fc1 = res.manifest.tensor("mlp.fc1.weight")
    assert fc1.stored_nbytes < fc1.nbytes / 4
    assert reg.verify(deep=True).ok
    meta = res.record.metadata.meta
    assert meta["lora.r"] == "2,4" and meta["lora.alpha"] == 8.0 and meta["lora.modules"] == 2
    assert meta["lora.rslora"] is (adapter == "adapter-rslora")
    # applied to the model, it behaves as PEFT's merged model
    model = copy.deepcopy(base_model)
    reg.resolve("lora").apply_to(model)
    tokens, _ = toy.make_dataset("topic", 64)
    reference = copy.deepcopy(base_model)
    reference.load_state_dict(merged)
    assert torch.allclose(model(tokens), reference(tokens), atol=1e-5)


def test_cli_create_lora(run, lora_zoo):
    d, base, *_ = lora_zoo
    r = run("create", "lora", "--base", str(base), "--lora", str(d / "adapter"), "--json",
            "--no-similarities")
    assert json.loads(r.stdout)["metadata"]["meta"]["lora.modules"] == 2
    assert "give --finetuned P or --lora DIR" in run("create", "x", "--base", str(base),
                                                     code=2).stderr
    assert "give --finetuned P or --lora DIR" in run(
        "create", "x", "--base", str(base), "--lora", str(d / "adapter"), "--finetuned",
        str(base), code=2).stderr


def _copy_adapter(src, dst, *, config=None, tensors=None):
    dst.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg.update(config or {})
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    weights = load_file(src / "adapter_model.safetensors")
    if tensors is not None:
        weights = tensors(weights)
    save_file(weights, dst / "adapter_model.safetensors")
    return dst


@pytest.mark.parametrize("case, error, needle", [
    ("dora", CheckpointError, "DoRA"),
    ("other-peft", CheckpointError, "only LoRA adapters"),
    ("bias", CheckpointError, "cannot import"),
    ("a-only", CheckpointError, "lora_A only"),
    ("rank-mismatch", CheckpointError, "the config says"),
    ("no-weights", CheckpointError, "no adapter_model.safetensors"),
    ("other-base", IncompatibleCheckpoints, "does not fit this base"),
])
def test_bad_adapters_are_refused_and_change_nothing(reg, reg_path, lora_zoo, tmp_path, case,
                                                    error, needle):
    d, base, *_ = lora_zoo
    src = d / "adapter"
    bad = tmp_path / case
    if case == "dora":
        _copy_adapter(src, bad, config={"use_dora": True})
    elif case == "other-peft":
        _copy_adapter(src, bad, config={"peft_type": "IA3"})
    elif case == "bias":
        _copy_adapter(src, bad, tensors=lambda w: {**w, "base_model.model.mlp.fc1.bias":
                                                   torch.zeros(128)})
    elif case == "a-only":
        _copy_adapter(src, bad, tensors=lambda w: {k: v for k, v in w.items()
                                                   if "fc2.lora_B" not in k})
    elif case == "rank-mismatch":
        _copy_adapter(src, bad, config={"rank_pattern": {}})
    elif case == "no-weights":
        bad.mkdir()
        (bad / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    else:  # an adapter trained on a wider model
        _train_adapter(toy.pretrain(width=48, steps=1), bad)
    reg.init()
    before = snapshot(reg_path)
    with pytest.raises(error, match=needle):
        reg.create("lora", base, lora=bad, similarities=False)
    assert snapshot(reg_path) == before


def test_fan_in_fan_out_adapters_transpose(reg, tmp_path):
    """GPT-2-style Conv1D weights are stored (in, out): PEFT sets fan_in_fan_out and merges
    (B·A)ᵀ. Checked against that formula on a hand-made adapter."""
    g = torch.Generator().manual_seed(0)
    save_file({"h.attn.weight": torch.randn(6, 5, generator=g)}, tmp_path / "base.safetensors")
    a, b = torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "fan_in_fan_out": True,
         "target_modules": ["attn"]}))
    save_file({"base_model.model.h.attn.lora_A.weight": a,
               "base_model.model.h.attn.lora_B.weight": b}, adapter / "adapter_model.safetensors")
    res = reg.create("gpt", tmp_path / "base.safetensors", lora=adapter, similarities=False)
    expected = ((b.double() @ a.double()).T * 2.0).float()
    assert torch.equal(reg.get(res.ref).tensors()["h.attn.weight"], expected)


def test_lowrank_codec_sums_in_a_fixed_order(tmp_path):
    """The decoded matrix is the float64 sum over k in order of exact products, times scale,
    rounded once: checked against plain Python floats (which are float64)."""
    import numpy as np

    from tvreg.codecs import ByteGroup, CodecPipeline, LowRank, Zstd
    from tvreg.errors import CorruptObject, FormatError
    from tvreg.format.manifest import FORMAT, Manifest

    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 7)).astype(np.float32)
    b = rng.standard_normal((5, 3)).astype(np.float32)
    codec = LowRank(5, 7, 3, 0.37, True)
    pipeline = CodecPipeline((codec, ByteGroup(4), Zstd(3)))
    blob = CodecPipeline((ByteGroup(4), Zstd(3))).encode(codec.payload(a, b))
    got = np.frombuffer(pipeline.decode(blob, 5 * 7 * 4), dtype=np.float32).reshape(7, 5)
    want = np.empty((5, 7), dtype=np.float32)
    for i in range(5):
        for j in range(7):
            acc = 0.0
            for k in range(3):
                acc += float(b[i, k]) * float(a[k, j])
            want[i, j] = np.float32(acc * 0.37)
    assert np.array_equal(got, want.T)
    dest = np.empty(5 * 7 * 4, dtype=np.uint8)
    pipeline.decode_into(blob, dest)
    assert np.array_equal(dest.view(np.float32).reshape(7, 5), got)
    with pytest.raises(CorruptObject):  # factors of another size
        pipeline.decode(blob, 6 * 7 * 4)
    with pytest.raises(tvreg.InvalidInput):
        codec.encode(b"dense bytes")
    for i, conf in enumerate(({"rows": 1, "cols": 1, "rank": 1, "scale": 1.0},  # the good one
                              {"rows": 0, "cols": 1, "rank": 1, "scale": 1.0},
                              {"rows": 1, "cols": 1, "rank": 1, "scale": float("nan")},
                              {"rows": 1, "cols": 1, "rank": 1 << 20, "scale": 1.0})):
        doc = {"format": FORMAT, "base_hash": "0" * 64, "arch_fingerprint": "0" * 64, "skipped": [],
               "tensors": [{"name": "w", "dtype": "float32", "source_dtype": "float32",
                            "shape": [1, 1], "sha256": "0" * 64,
                            "codecs": [{"name": "lowrank", "configuration": conf},
                                       {"name": "zstd", "configuration": {"level": 3}}],
                            "chunks": [{"blob": "0" * 64, "nbytes": 4, "stored_nbytes": 9}]}]}
        if i == 0:
            assert Manifest.from_json(doc).tensors[0].codecs.label == "lowrank1+zstd3"
            continue
        with pytest.raises(FormatError, match="lowrank"):
            Manifest.from_json(doc)


def test_lora_manifest_follows_the_json_schema(reg, lora_zoo):
    import importlib.resources

    jsonschema = pytest.importorskip("jsonschema")
    d, base, *_ = lora_zoo
    res = reg.create("lora", base, lora=d / "adapter", similarities=False)
    path = importlib.resources.files("tvreg.schema") / "json" / "manifest.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(path.read_text()))
    doc = json.loads(reg.objects.get(res.record.vector_id))
    validator.validate(doc)
    assert any(c["name"] == "lowrank" for t in doc["tensors"] for c in t["codecs"])


@pytest.mark.parametrize("transpose", [False, True])
def test_lowrank_blocks_do_not_change_the_sums(transpose):
    """Row blocks (here 2 of them, uneven) give exactly the unblocked rank-order sums."""
    import numpy as np

    from tvreg.codecs import LowRank

    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 200)).astype(np.float32)
    b = rng.standard_normal((300, 5)).astype(np.float32)
    acc = np.zeros((300, 200))
    for k in range(5):
        acc += np.multiply.outer(b[:, k].astype(np.float64), a[k].astype(np.float64))
    want = (acc * 1.5).astype(np.float32)
    got = LowRank(300, 200, 5, 1.5, transpose).product(a, b)
    assert np.array_equal(got, want.T if transpose else want)
