"""`create --include/--exclude` and the zero-vector warning (issue 14, item 7): real safetensors
files, a real registry, the CLI through click's runner and, where stderr and the exit code
matter, a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import snapshot
from safetensors.torch import load_file, save_file

import tvreg


@pytest.fixture
def head_pair(zoo, tmp_path):
    """The toy base, and its sentiment fine-tune with an extra classification head and without
    two of the base's tensors (a buffer and a norm's bias it dropped)."""
    ft = load_file(str(zoo.finetuned["sentiment"]))
    del ft["position_ids"], ft["norm.bias"]
    ft["score.weight"] = torch.randn(2, 4)
    ft["score.bias"] = torch.randn(2)
    path = tmp_path / "ft_head.safetensors"
    save_file(ft, str(path))
    return zoo.base, path


def test_differing_key_sets_name_the_options(run, head_pair, reg_path):
    base, ft = head_pair
    r = run("create", "x", "--base", str(base), "--finetuned", str(ft), code=2)
    line = r.stderr.strip()
    assert "\n" not in line
    assert "2 tensor(s) only in the fine-tuned: score.bias, score.weight" in line
    assert "2 tensor(s) only in the base: norm.bias, position_ids" in line
    assert line.endswith("leave them out with --exclude REGEX (or select with --include REGEX)")
    assert not reg_path.exists()


def test_exclude_stores_base_tensors_left_out_as_zero_deltas(run, reg, head_pair, zoo):
    base, ft = head_pair
    pattern = r"^score\.|^norm\.bias$|^position_ids$"
    r = run("create", "x", "--base", str(base), "--finetuned", str(ft), "--exclude", pattern,
            "--no-similarities")
    assert r.stdout == "x@1\n"
    assert "4 tensor(s) left out by --include/--exclude" in r.stderr
    vec = reg.get("x@1")
    full = reg.create("full", zoo.base, zoo.finetuned["sentiment"], similarities=False)
    # same base hash and architecture as a vector made without a filter: composable
    assert vec.base_hash == full.manifest.base_hash
    assert vec.manifest.arch_fingerprint == full.manifest.arch_fingerprint
    assert vec.names() == reg.get("full@1").names()
    assert vec.manifest.skipped == full.manifest.skipped  # position_ids, as always
    tensors, reference = vec.tensors(), reg.get("full@1").tensors()
    assert torch.count_nonzero(reference["norm.bias"]) > 0
    assert torch.count_nonzero(tensors["norm.bias"]) == 0
    for name in vec.names():
        if name != "norm.bias":
            assert torch.equal(tensors[name], reference[name]), name
    meta = reg.show("x@1")["meta"]
    assert meta == {"create.exclude": pattern, "create.left_out": 4,
                    "create.left_out_names": "norm.bias, position_ids, score.bias, score.weight"}
    shown = run("show", "x@1").stdout
    assert '"create.left_out_names": "norm.bias, position_ids' in shown


def test_include_selects_and_a_filtered_vector_composes_with_an_unfiltered_one(run, reg, zoo,
                                                                              tmp_path):
    base = load_file(str(zoo.base))
    weights = [n for n in sorted(base) if n.endswith(".weight")]
    run("create", "part", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
        "--include", r"\.weight$", "--no-similarities")
    run("create", "sentiment", "--base", str(zoo.base), "--finetuned",
        str(zoo.finetuned["sentiment"]), "--no-similarities")
    out = tmp_path / "merged.safetensors"
    run("compose", "part + sentiment", "-o", str(out))
    merged = load_file(str(out))
    part, sent = reg.get("part@1").tensors(), reg.get("sentiment@1").tensors()
    topic = reg.create("topic", zoo.base, zoo.finetuned["topic"], similarities=False)
    full_topic = reg.get(topic.record.ref).tensors()
    for name in merged:
        expected = sent[name] + (full_topic[name] if name in weights else 0)
        assert torch.allclose(merged[name], expected, atol=1e-7), name
        assert torch.equal(part[name], full_topic[name] if name in weights
                           else torch.zeros_like(part[name])), name
    assert reg.show("part@1")["meta"]["create.include"] == r"\.weight$"


def test_filter_errors_leave_the_registry_as_it_was(run, zoo, reg_path):
    run("create", "s", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["sentiment"]),
        "--no-similarities")
    before = snapshot(reg_path)
    r = run("create", "t", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
            "--exclude", "(", code=2)
    assert r.stderr.startswith("tvreg: error: invalid --exclude regex '('")
    r = run("create", "t", "--base", str(zoo.base), "--finetuned", str(zoo.finetuned["topic"]),
            "--include", "^no-such-tensor$", code=2)
    assert "leave no floating tensor" in r.stderr
    assert snapshot(reg_path) == before


def test_python_create_include_exclude_and_many_left_out_names(reg, tmp_path):
    torch.manual_seed(0)
    base = {f"layer{i:03d}.weight": torch.randn(2) for i in range(300)}
    ft = {n: t + 1 for n, t in base.items()}
    res = reg.create("few", base, ft, include=r"^layer000\.", similarities=False)
    meta = res.record.metadata.meta
    assert meta["create.left_out"] == 299 and "create.exclude" not in meta
    names = meta["create.left_out_names"]
    assert names.startswith("layer001.weight, layer002.weight") and names.endswith(" more")
    assert len(names) <= 1100
    # the user's meta wins over the recorded filter keys
    res = reg.create("few2", base, ft, exclude="9", meta={"create.left_out": "mine"},
                     similarities=False)
    assert res.record.metadata.meta["create.left_out"] == "mine"


def test_zero_vector_warns_in_python_and_is_stored(reg, zoo):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = reg.create("same", zoo.base, zoo.base, similarities=False)
    zero = [w for w in caught if issubclass(w.category, tvreg.ZeroVectorWarning)]
    assert len(zero) == 1 and issubclass(tvreg.ZeroVectorWarning, UserWarning)
    assert str(zero[0].message) == ("the fine-tuned checkpoint equals the base: the task vector "
                                    "is all zeros (wrong file?)")
    assert zero[0].filename == __file__  # attributed to the caller of create
    assert res.created and reg.get("same@1").n_params > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.create("real", zoo.base, zoo.finetuned["sentiment"], similarities=False)
    assert not [w for w in caught if issubclass(w.category, tvreg.ZeroVectorWarning)]


def test_zero_vector_warning_is_one_stderr_line_and_exit_0(zoo, tmp_path):
    env = {**os.environ, "TVREG_HOME": str(tmp_path / "reg")}
    p = subprocess.run([sys.executable, "-m", "tvreg.cli", "create", "same", "--base",
                        str(zoo.base), "--finetuned", str(zoo.base), "--json"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ref"] == "same@1"
    lines = p.stderr.splitlines()
    assert lines[0] == ("tvreg: warning: the fine-tuned checkpoint equals the base: the task "
                        "vector is all zeros (wrong file?)")
    assert lines[1].startswith("created same@1")
    assert "Warning" not in p.stderr  # no Python warning format


def test_every_command_prints_tvreg_warnings_as_one_line(capsys):
    from tvreg.cli.main import _tvreg_warnings_as_lines

    with pytest.warns(UserWarning, match="not ours"), _tvreg_warnings_as_lines():
        warnings.warn("all zeros", tvreg.ZeroVectorWarning)
        warnings.warn("not ours", UserWarning)
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "tvreg: warning: all zeros"
    assert "tvreg: warning: not ours" not in err  # others are shown as Python shows them
