"""Hugging Face model folders written by tvreg.tensors.hf_folder, checked with transformers
itself: a folder it loads with the exact weights written, shards cut at the size and named as
``save_pretrained`` names them, and bad input refused before anything is written."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tvreg.errors import InvalidInput, RegistryError
from tvreg.tensors.hf_folder import (
    INDEX_NAME,
    WEIGHTS_NAME,
    parse_size,
    plan_shards,
    write_hf_folder,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A tiny BERT saved by transformers (config, weights) plus a tokenizer-like extra file."""
    folder = tmp_path_factory.mktemp("hf") / "base"
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true}\n')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
    return folder


def _merged(base_folder, dtype=torch.float32):
    model = transformers.AutoModel.from_pretrained(base_folder)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(1)
    out = {}
    for n, t in sd.items():
        if t.is_floating_point():
            t = t + 0.01 * torch.randn(t.shape, generator=g)
        out[n] = t.to(dtype) if t.is_floating_point() else t
    return out


def _specs(sd):
    from tvreg.dtypes import dtype_name

    return [(n, dtype_name(t.dtype), tuple(t.shape)) for n, t in sd.items()]


def test_a_folder_transformers_loads_with_the_exact_weights(base_folder, tmp_path):
    sd = _merged(base_folder)
    out = tmp_path / "out"
    write_hf_folder(out, base_folder, _specs(sd), iter(sd.items()), {"tvreg.expression": "a"})
    assert sorted(os.listdir(out)) == ["1_Pooling", "config.json", WEIGHTS_NAME,
                                       "tokenizer_config.json", "vocab.txt"]
    loaded = transformers.AutoModel.from_pretrained(out).state_dict()
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[n], sd[n]) for n in sd)
    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS_NAME), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "tvreg.expression": "a"}


def test_shards_are_cut_and_named_as_save_pretrained_does(base_folder, tmp_path):
    sd = _merged(base_folder)
    model = transformers.AutoModel.from_pretrained(base_folder)
    model.load_state_dict(sd)
    theirs = tmp_path / "theirs"
    model.save_pretrained(theirs, max_shard_size="20KB")
    ours = tmp_path / "ours"
    write_hf_folder(ours, base_folder, _specs(sd), iter(sd.items()), shard_size=parse_size("20KB"))
    index = json.loads((ours / INDEX_NAME).read_text())
    their_index = json.loads((theirs / INDEX_NAME).read_text())
    # the same files and total; a tensor near a cut may land on the other side of it, as the
    # tensors are cut in the order they are given (transformers uses its own save order)
    assert index["weight_map"].keys() == their_index["weight_map"].keys()
    assert index["metadata"]["total_size"] == their_index["metadata"]["total_size"]
    for name in set(index["weight_map"].values()):
        assert (ours / name).stat().st_size <= 20_000 + 4096  # data within the cut, plus header
    assert sorted(p for p in os.listdir(ours) if p.endswith(".safetensors")) == \
        sorted(p for p in os.listdir(theirs) if p.endswith(".safetensors"))
    loaded = transformers.AutoModel.from_pretrained(ours).state_dict()
    assert all(torch.equal(loaded[n], sd[n]) for n in sd)


def test_config_dtype_follows_the_output(base_folder, tmp_path):
    sd = _merged(base_folder, torch.bfloat16)
    out = tmp_path / "bf16"
    write_hf_folder(out, base_folder, _specs(sd), iter(sd.items()), dtype="bfloat16")
    config = json.loads((out / "config.json").read_text())
    assert [config[k] for k in ("torch_dtype", "dtype") if k in config] and \
        all(config[k] == "bfloat16" for k in ("torch_dtype", "dtype") if k in config)
    model = transformers.AutoModel.from_pretrained(out, torch_dtype="auto")
    assert model.dtype == torch.bfloat16


def test_bad_input_writes_nothing(base_folder, tmp_path):
    sd = _merged(base_folder)
    specs = _specs(sd)
    (tmp_path / "weights-only").mkdir()
    with pytest.raises(InvalidInput, match="no config.json"):
        write_hf_folder(tmp_path / "o1", tmp_path / "weights-only", specs, iter(sd.items()))
    with pytest.raises(InvalidInput, match="shard-size"):
        write_hf_folder(tmp_path / "o2", base_folder, specs, iter(sd.items()), shard_size=100)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty"):
        write_hf_folder(busy, base_folder, specs, iter(sd.items()))
    assert sorted(os.listdir(tmp_path)) == ["busy", "weights-only"]
    assert os.listdir(busy) == ["keep.txt"]
    write_hf_folder(busy, base_folder, specs, iter(sd.items()), force=True)  # replaced
    assert "keep.txt" not in os.listdir(busy) and WEIGHTS_NAME in os.listdir(busy)
    assert sorted(os.listdir(tmp_path)) == ["busy", "weights-only"]  # no temporary left


def test_a_failure_mid_way_leaves_no_folder(base_folder, tmp_path):
    sd = _merged(base_folder)

    def broken():
        for i, item in enumerate(sd.items()):
            if i == 3:
                raise OSError("disk gone")
            yield item

    with pytest.raises(RegistryError, match="disk gone"):
        write_hf_folder(tmp_path / "o", base_folder, _specs(sd), broken(), shard_size=20_000)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("text, n", [("500MB", 500 * 10**6), ("5GB", 5 * 10**9),
                                     ("1.5GiB", int(1.5 * 2**30)), ("1000", 1000), (7, 7)])
def test_sizes(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1MB", "0", "MB"])
def test_bad_sizes(text):
    with pytest.raises(InvalidInput):
        parse_size(text)


def test_plan_starts_a_shard_where_a_tensor_does_not_fit():
    specs = [("a", "float32", (10,)), ("b", "float32", (10,)), ("c", "float32", (5,))]
    assert [[s[0] for s in shard] for shard in plan_shards(specs, 80)] == [["a", "b"], ["c"]]
    assert [[s[0] for s in shard] for shard in plan_shards(specs, 60)] == [["a"], ["b", "c"]]
