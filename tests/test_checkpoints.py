"""Real-file tests of checkpoint loading (tvreg.tensors.checkpoints) and the safetensors writer."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tvreg.errors import CheckpointError, RegistryError
from tvreg.tensors.checkpoints import Checkpoint, TensorInfo, open_checkpoint
from tvreg.tensors.safetensors_io import write_safetensors


def _state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    model.register_buffer("step", torch.arange(5, dtype=torch.int64))
    model.register_buffer("scale", torch.randn(3, 2).to(torch.bfloat16))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def sd() -> dict[str, torch.Tensor]:
    return _state_dict()


def _assert_matches(ckpt: Checkpoint, sd: dict[str, torch.Tensor]) -> None:
    assert ckpt.names() == sorted(sd)
    assert ckpt.infos() == [
        TensorInfo(k, str(sd[k].dtype).removeprefix("torch."), tuple(sd[k].shape))
        for k in sorted(sd)
    ]
    for name, want in sd.items():
        got = ckpt.tensor(name)
        assert got.dtype == want.dtype and got.device.type == "cpu" and got.is_contiguous()
        assert torch.equal(got, want), name
    assert ckpt.info("scale").dtype == "bfloat16"
    assert ckpt.info("0.weight").numel == 32


def _write_sharded(directory: pathlib.Path, sd: dict[str, torch.Tensor]) -> None:
    names = sorted(sd)
    shards = {
        "model-00001-of-00002.safetensors": names[:3],
        "model-00002-of-00002.safetensors": names[3:],
    }
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(directory / shard))
        weight_map.update({k: shard for k in keys})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


# --- supported formats --------------------------------------------------------------------------


def test_single_safetensors_file(tmp_path, sd):
    save_file(sd, str(tmp_path / "model.safetensors"))
    with open_checkpoint(tmp_path / "model.safetensors") as ckpt:
        assert ckpt.path == str(tmp_path / "model.safetensors")
        _assert_matches(ckpt, sd)


def test_sharded_directory(tmp_path, sd):
    _write_sharded(tmp_path, sd)
    with open_checkpoint(tmp_path) as ckpt:
        _assert_matches(ckpt, sd)


def test_directory_with_one_safetensors_file(tmp_path, sd):
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    with open_checkpoint(str(tmp_path)) as ckpt:
        _assert_matches(ckpt, sd)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_pt_state_dict(tmp_path, sd, zipfile):
    torch.save(sd, tmp_path / "model.pt", _use_new_zipfile_serialization=zipfile)
    with open_checkpoint(tmp_path / "model.pt") as ckpt:
        _assert_matches(ckpt, sd)


def test_bin_wrapped_state_dict(tmp_path, sd):
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "pytorch_model.bin")
    with open_checkpoint(tmp_path / "pytorch_model.bin") as ckpt:
        _assert_matches(ckpt, sd)


def test_format_sniffed_without_extension(tmp_path, sd):
    save_file(sd, str(tmp_path / "weights_st"))
    torch.save(sd, tmp_path / "weights_zip")
    for name in ("weights_st", "weights_zip"):
        with open_checkpoint(tmp_path / name) as ckpt:
            _assert_matches(ckpt, sd)


def test_tensor_is_a_private_copy(tmp_path):
    base = torch.arange(6, dtype=torch.float32)
    torch.save({"a": base, "b": base[::2]}, tmp_path / "views.pt")  # shared storage, strided
    with open_checkpoint(tmp_path / "views.pt") as ckpt:
        b = ckpt.tensor("b")
        assert b.is_contiguous() and torch.equal(b, base[::2])
        b.zero_()
        assert torch.equal(ckpt.tensor("a"), base)


def _mapped(path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith(real) for line in maps)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_safetensors_tensors_are_read_not_mapped(tmp_path, sd):
    """A pass over a checkpoint must not leave its file mapped: mapped pages count in the
    process's resident memory until the file is closed (a whole model after one pass)."""
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    with open_checkpoint(path) as ckpt:
        tensors = {n: ckpt.tensor(n) for n in ckpt.names()}
        assert not _mapped(path)
    for name, want in sd.items():
        assert torch.equal(tensors[name], want)
        tensors[name].zero_()  # private buffers
    assert torch.equal(load_file(str(path))["step"], sd["step"])


def test_safetensors_file_cut_after_opening(tmp_path, sd):
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    last = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"])
    with open_checkpoint(path) as ckpt:
        os.truncate(path, len(raw) - 4)
        with pytest.raises(CheckpointError, match="ends before its data"):
            ckpt.tensor(last)


def test_closed_checkpoint_refuses_reads(tmp_path, sd):
    save_file(sd, str(tmp_path / "model.safetensors"))
    ckpt = open_checkpoint(tmp_path / "model.safetensors")
    ckpt.close()
    with pytest.raises(CheckpointError, match="closed"):
        ckpt.tensor("step")


# --- errors -------------------------------------------------------------------------------------


def _raises(path, match: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return info.value


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.safetensors", "no such file")


def test_garbage_bytes(tmp_path):
    blob = bytes(range(256)) * 4
    (tmp_path / "garbage.safetensors").write_bytes(blob)
    (tmp_path / "garbage").write_bytes(blob)
    (tmp_path / "garbage.bin").write_bytes(blob)
    _raises(tmp_path / "garbage.safetensors", "not a valid safetensors file")
    _raises(tmp_path / "garbage", "unknown checkpoint format")
    _raises(tmp_path / "garbage.bin", "refusing to load|cannot load")


def test_truncated_safetensors(tmp_path, sd):
    save_file(sd, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    _raises(tmp_path / "cut.safetensors", "not a valid safetensors file")


def test_empty_checkpoints(tmp_path):
    save_file({}, str(tmp_path / "empty.safetensors"))
    torch.save({}, tmp_path / "empty.pt")
    _raises(tmp_path / "empty.safetensors", "empty checkpoint")
    _raises(tmp_path / "empty.pt", "empty checkpoint")


def test_index_with_missing_shard(tmp_path, sd):
    _write_sharded(tmp_path, sd)
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    _raises(tmp_path, "does not exist")


@pytest.mark.parametrize(
    "shard", ["../evil.safetensors", "sub/x.safetensors", "/etc/evil.safetensors", ".."]
)
def test_index_with_escaping_shard_name(tmp_path, sd, shard):
    (tmp_path / "ckpt").mkdir()
    save_file(sd, str(tmp_path / "evil.safetensors"))
    index = {"weight_map": {name: shard for name in sd}}
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(json.dumps(index))
    _raises(tmp_path / "ckpt", "not a plain file name")


def test_index_tensor_missing_from_shard(tmp_path, sd):
    _write_sharded(tmp_path, sd)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with open_checkpoint(tmp_path) as ckpt:
        assert "ghost" in ckpt.names()
        with pytest.raises(CheckpointError, match="listed in the index but missing"):
            ckpt.info("ghost")


def test_ambiguous_directories(tmp_path, sd):
    save_file(sd, str(tmp_path / "a.safetensors"))
    save_file(sd, str(tmp_path / "b.safetensors"))
    _raises(tmp_path, "several .safetensors files")
    for name in ("a", "b"):
        (tmp_path / f"{name}.safetensors.index.json").write_text('{"weight_map": {}}')
    _raises(tmp_path, "several index files")
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", "no .safetensors file")


class _TouchOnUnpickle:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "payload": _TouchOnUnpickle(marker)}, tmp_path / "evil.pt")
    error = _raises(tmp_path / "evil.pt", "refusing to load: not loadable with weights_only=True")
    assert "Unsupported global" in str(error)
    assert not marker.exists()
    # The payload is live: a full unpickle would have created the marker.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


class _SystemOnUnpickle:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_os_system_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "payload": _SystemOnUnpickle(marker)}, tmp_path / "evil.bin")
    error = _raises(tmp_path / "evil.bin", "refusing to load: not loadable with weights_only=True")
    assert "system" in str(error)
    assert not marker.exists()


def test_non_tensor_value(tmp_path, sd):
    torch.save({**sd, "epoch": 3, "zz": "x"}, tmp_path / "mixed.pt")
    _raises(tmp_path / "mixed.pt", "'epoch' is an int, not a tensor")


def test_unsupported_dtype(tmp_path):
    torch.save({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "complex.pt")
    with open_checkpoint(tmp_path / "complex.pt") as ckpt:
        with pytest.raises(CheckpointError, match="'c' has unsupported dtype"):
            ckpt.info("c")


# --- writer -------------------------------------------------------------------------------------


def _mixed() -> dict[str, torch.Tensor]:
    return {
        "f32": torch.randn(3, 5),
        "flag": torch.tensor([True, False, True]),  # 3 bytes: later tensors are unaligned
        "bf16": torch.randn(4, 2).to(torch.bfloat16),
        "f16": torch.randn(7).to(torch.float16),
        "i64": torch.arange(-3, 4, dtype=torch.int64),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "strided": torch.arange(12, dtype=torch.int32).reshape(3, 4).t(),
    }


def _specs(tensors):
    return [(k, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for k, t in tensors.items()]


def test_writer_round_trip(tmp_path):
    tensors = _mixed()
    path = tmp_path / "out.safetensors"
    size = write_safetensors(path, _specs(tensors), iter(tensors.items()))
    assert size == path.stat().st_size
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert (8 + header_len) % 8 == 0
    loaded = load_file(str(path))
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp_path / "ref.safetensors"))
    reference = load_file(str(tmp_path / "ref.safetensors"))
    assert loaded.keys() == tensors.keys() == reference.keys()
    for name, want in tensors.items():
        assert loaded[name].dtype == want.dtype and torch.equal(loaded[name], want)
        raw = loaded[name].reshape(-1).view(torch.uint8)
        assert torch.equal(raw, reference[name].reshape(-1).view(torch.uint8))
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("bf16"), tensors["bf16"])
        assert f.metadata() == {"format": "pt"}
    with open_checkpoint(path) as ckpt:
        assert ckpt.info("scalar") == TensorInfo("scalar", "float64", ())


def test_writer_metadata(tmp_path):
    path = tmp_path / "meta.safetensors"
    t = torch.ones(2)
    metadata = {"format": "pt", "k": "é"}
    write_safetensors(path, [("t", "float32", (2,))], [("t", t)], metadata=metadata)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata


def test_writer_always_marks_format_pt(tmp_path):
    """transformers refuses safetensors files whose metadata lacks "format": "pt" (issue 14, 4)."""
    path = tmp_path / "fmt.safetensors"
    write_safetensors(path, [("t", "float32", (2,))], [("t", torch.ones(2))], metadata={"k": "v"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"k": "v", "format": "pt"}
    bare = tmp_path / "bare.safetensors"
    write_safetensors(bare, [("t", "float32", (2,))], [("t", torch.ones(2))])
    with safe_open(str(bare), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize(
    "stream",
    [
        [("a", torch.zeros(2)), ("x", torch.zeros(3))],  # wrong name
        [("a", torch.zeros(2)), ("b", torch.zeros(3, dtype=torch.float64))],  # wrong dtype
        [("a", torch.zeros(2)), ("b", torch.zeros(4))],  # wrong shape
        [("a", torch.zeros(2))],  # too few
        [("a", torch.zeros(2)), ("b", torch.zeros(3)), ("c", torch.zeros(1))],  # too many
    ],
    ids=["name", "dtype", "shape", "too-few", "too-many"],
)
def test_writer_mismatch_leaves_nothing(tmp_path, stream):
    specs = [("a", "float32", (2,)), ("b", "float32", (3,))]
    with pytest.raises(RegistryError):
        write_safetensors(tmp_path / "out.safetensors", specs, iter(stream))
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "out.safetensors"
    write_safetensors(path, [("a", "float32", (2,))], [("a", torch.ones(2))])
    before = path.read_bytes()
    with pytest.raises(RegistryError):
        write_safetensors(path, [("a", "float32", (2,))], [("a", torch.ones(3))])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
