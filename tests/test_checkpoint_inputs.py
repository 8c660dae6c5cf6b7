"""Checkpoints users actually have (issue 14 items 7, 9, 10): real files written in tmp_path,
state dicts in memory, a real (tiny) transformers model with tied embeddings."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import tvreg
from tvreg.tensors.checkpoints import open_checkpoint


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(5)}


def test_folder_with_only_pytorch_model_bin_is_recognised(tmp_path):
    for name in ("pytorch_model.bin", "model.bin"):
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        torch.save(_state(), d / name)
        ckpt = open_checkpoint(d)
        try:
            assert sorted(ckpt.names()) == ["a.weight", "b.bias"]
        finally:
            ckpt.close()


def test_path_to_safetensors_index_json_is_accepted(tmp_path):
    state = _state()
    save_file({"a.weight": state["a.weight"]}, os.fspath(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.bias": state["b.bias"]}, os.fspath(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                            "b.bias": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = open_checkpoint(tmp_path / "model.safetensors.index.json")
    try:
        assert sorted(ckpt.names()) == ["a.weight", "b.bias"]
    finally:
        ckpt.close()


# --- state dicts in memory (issue 14 item 10) ----------------------------------------------------


def _pair() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    base = {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(5),
            "half": torch.randn(6).to(torch.bfloat16), "steps": torch.arange(4)}
    ft = {n: (t + 0.25).to(t.dtype) if t.is_floating_point() else t.clone()
          for n, t in base.items()}
    return base, ft


def test_create_from_in_memory_state_dicts_matches_files_and_leaves_them_unchanged(tmp_path):
    import numpy as np

    base, ft = _pair()
    save_file(base, os.fspath(tmp_path / "base.safetensors"))
    save_file(ft, os.fspath(tmp_path / "ft.safetensors"))
    keep_base = {n: t.clone() for n, t in base.items()}
    keep_ft = {n: t.clone() for n, t in ft.items()}
    numpy_ft = {n: t.numpy() for n, t in ft.items() if t.dtype != torch.bfloat16}
    numpy_ft["half"] = ft["half"]  # numpy has no bfloat16: a mix of arrays and tensors
    with tvreg.open(tmp_path / "reg") as reg:
        files = reg.create("files", tmp_path / "base.safetensors", tmp_path / "ft.safetensors",
                           similarities=False)
        memory = reg.create("memory", base, ft, similarities=False)
        arrays = reg.create("arrays", base, numpy_ft, similarities=False)
        assert memory.record.vector_id == files.record.vector_id
        assert arrays.record.vector_id == files.record.vector_id
    for n in base:  # build.py subtracts in place: only ever on private copies
        assert torch.equal(base[n], keep_base[n]) and torch.equal(ft[n], keep_ft[n]), n
        if n != "half":
            assert np.array_equal(numpy_ft[n], keep_ft[n].numpy()), n


def test_create_and_apply_take_torch_modules(tmp_path):
    torch.manual_seed(2)
    base = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    ft = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        ft[0].weight.add_(1.0)
    save_file(base.state_dict(), os.fspath(tmp_path / "base.safetensors"))
    with tvreg.open(tmp_path / "reg") as reg:
        res = reg.create("lin", base, ft, similarities=False)
        assert res.manifest.n_params == 4 * 3 + 3 + 3 + 3
        delta = reg.get("lin@1").tensors()
        assert torch.allclose(delta["0.weight"], torch.ones(3, 4))
        assert torch.count_nonzero(delta["0.bias"]) == 0
        out = tmp_path / "merged.safetensors"
        reg.apply("lin", base, out)  # a module as apply's base too
        assert torch.allclose(load_file(os.fspath(out))["0.weight"], ft[0].weight.detach())


def test_in_memory_arrays_in_any_layout_are_read_as_their_values():
    import numpy as np

    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    given = {"reversed": values[::-1], "big_endian": values.astype(">f4"),
             "transposed": values.T, "read_only": np.frombuffer(values.tobytes(), np.float32)}
    with open_checkpoint(given, label="finetuned") as ck:
        assert ck.info("big_endian").dtype == "float32"
        for name, array in given.items():
            assert np.array_equal(ck.tensor(name).numpy(), array), name


@pytest.mark.parametrize("given, message", [
    ({"w": [1.0, 2.0]}, "finetuned: value of 'w' is a list, not a torch tensor or numpy array"),
    ({"w": 3}, "finetuned: value of 'w' is an int, not a torch tensor or numpy array"),
    ({1: torch.zeros(2)}, "finetuned: key 1 is an int, not a string"),
    ({"w": torch.zeros(2, dtype=torch.complex64)},
     "finetuned: tensor 'w' has unsupported dtype torch.complex64"),
    ({"w": __import__("numpy").array(["x"])}, "finetuned: array 'w' has unsupported dtype <U1"),
    ({"w": torch.zeros(2, device="meta")}, "finetuned: tensor 'w' is not a dense tensor"),
    ({}, "finetuned: empty checkpoint: no tensors"),
    ({"": torch.zeros(2)}, "finetuned: a tensor has an empty name"),
    (7, "finetuned: an int is not a checkpoint (a path, a state dict or a torch.nn.Module)"),
    ([torch.zeros(2)], "finetuned: a list is not a checkpoint"),
])
def test_bad_in_memory_checkpoints_are_one_line_errors(tmp_path, given, message):
    base, _ = _pair()
    root = tmp_path / "reg"
    with tvreg.open(root) as reg:
        with pytest.raises(tvreg.CheckpointError) as err:
            reg.create("bad", base, given, similarities=False)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not root.exists()  # nothing was written


# --- tied tensors in a .bin (issue 14 item 7) ----------------------------------------------------


def _tiny_tied_model(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=256, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    return GPT2LMHeadModel(config)


def test_tied_embeddings_in_a_bin_are_computed_stored_and_counted_once(tmp_path):
    model = _tiny_tied_model(0)
    sd = model.state_dict()
    tied = ("lm_head.weight", "transformer.wte.weight")
    assert sd[tied[0]].data_ptr() == sd[tied[1]].data_ptr()  # HF ties them
    torch.save(sd, tmp_path / "base.bin")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(model.state_dict(), tmp_path / "ft.bin")
    with open_checkpoint(tmp_path / "ft.bin") as ck:
        assert ck.shared_names() == {"transformer.wte.weight": "lm_head.weight"}
        embed_bytes = ck.info("lm_head.weight").numel * 4
    ticks: list[int] = []
    with tvreg.open(tmp_path / "reg") as reg:
        res = reg.create("gpt", tmp_path / "base.bin", tmp_path / "ft.bin", similarities=False,
                         on_progress=ticks.append)
        m = res.manifest
        a, b = m.tensor(tied[0]), m.tensor(tied[1])
        assert a.chunks == b.chunks and a.sha256 == b.sha256  # both names, the same blobs
        assert sum(ticks) == m.raw_bytes - embed_bytes  # read and encoded once
        # the objects written hold the embedding's delta once: fewer than one per entry
        blobs = [c.blob for t in m.tensors for c in t.chunks]
        assert res.new_objects == len(set(blobs)) < len(blobs)
        on_disk = sum(os.path.getsize(os.path.join(d, f))
                      for d, _, fs in os.walk(tmp_path / "reg" / "objects") for f in fs)
        assert on_disk < m.stored_bytes  # stored_bytes counts each entry's chunks (§ format)
        delta = reg.get("gpt@1").tensors()
        assert torch.equal(delta[tied[0]], delta[tied[1]])
        expected = model.state_dict()[tied[0]] - torch.load(tmp_path / "base.bin")[tied[0]]
        assert torch.allclose(delta[tied[0]], expected, atol=1e-6)
        # the same tensors untied (as a safetensors file holds them) give the same vector
        save_file({n: t.clone() for n, t in torch.load(tmp_path / "base.bin").items()},
                  os.fspath(tmp_path / "base.safetensors"))
        save_file({n: t.clone() for n, t in torch.load(tmp_path / "ft.bin").items()},
                  os.fspath(tmp_path / "ft.safetensors"))
        untied = reg.create("gpt-st", tmp_path / "base.safetensors",
                            tmp_path / "ft.safetensors", similarities=False)
        assert untied.record.vector_id == res.record.vector_id


def test_tensors_tied_in_only_one_checkpoint_are_computed_apart(tmp_path):
    w = torch.randn(4, 3)
    base = {"embed": w, "head": w}  # tied in the base
    ft = {"embed": w + 1, "head": w + 2}  # untied by the fine-tuning
    with tvreg.open(tmp_path / "reg") as reg:
        reg.create("apart", base, ft, similarities=False)
        delta = reg.get("apart@1").tensors()
    assert torch.allclose(delta["embed"], torch.ones(4, 3))
    assert torch.allclose(delta["head"], 2 * torch.ones(4, 3))
    assert torch.equal(base["embed"], w)  # the user's shared tensor is untouched


def test_exact_mode_from_in_memory_dicts_stores_the_base_and_rebuilds_the_fine_tune(tmp_path):
    """Exact mode stores the base: from a state dict in memory too (not by reopening a path),
    and with tensors left out by --exclude (rebuilt as the base's)."""
    base, ft = _pair()
    ft["extra.head"] = torch.ones(2)
    with tvreg.open(tmp_path / "reg") as reg:
        res = reg.create("e", base, ft, exact=True, exclude=r"^extra\.|^b\.bias$",
                         similarities=False)
        assert reg.stored_base(res.manifest.base_hash) is not None
        out = tmp_path / "rebuilt.safetensors"
        reg.apply("e", None, out)
    rebuilt = load_file(os.fspath(out))
    assert torch.equal(rebuilt["a.weight"], ft["a.weight"])  # bit for bit
    assert torch.equal(rebuilt["half"], ft["half"])
    assert torch.equal(rebuilt["b.bias"], base["b.bias"])  # left out: the base's
    assert "extra.head" not in rebuilt
