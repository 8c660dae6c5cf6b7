"""Checkpoints users actually have (issue 14 item 9): real files written in tmp_path."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from tvreg.checkpoints import open_checkpoint


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
