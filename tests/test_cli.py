"""The CLI through click's CliRunner (exit codes, stdout vs stderr, --json) and once as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import snapshot
from safetensors.torch import load_file, save_file


def _create(run, zoo, task, *extra, code=0):
    return run("create", task, "--base", str(zoo.base), "--finetuned", str(zoo.finetuned[task]),
               "--task", task, *extra, code=code)


def test_create_prints_ref_on_stdout_and_summary_on_stderr(run, zoo):
    r = _create(run, zoo, "sentiment", "--lr", "2e-5", "--steps", "20", "--meta", "seed=3",
                "--meta", "note=hello world")
    assert r.stdout.strip() == "sentiment@1"
    assert "created sentiment@1" in r.stderr and "1 non-floating tensor(s) left out" in r.stderr
    again = _create(run, zoo, "sentiment", "--lr", "2e-5", "--steps", "20", "--meta", "seed=3",
                    "--meta", "note=hello world")
    assert again.stdout.strip() == "sentiment@1"
    assert "no new version" in again.stderr
    rows = json.loads(run("sql", "SELECT lr, steps, meta FROM versions", "--json").stdout)
    assert rows[0]["lr"] == 2e-5 and rows[0]["steps"] == 20
    assert rows[0]["meta"] == {"seed": 3, "note": "hello world"}  # JSON columns decoded


def test_listing_commands_emit_parseable_json(run, zoo):
    for task in ("sentiment", "topic"):
        _create(run, zoo, task)
    _create(run, zoo, "topic", "--lr", "0.5")  # same content, new metadata -> topic@2
    run("tag", "topic@1", "prod")

    ls = json.loads(run("ls", "--json").stdout)
    assert [(r["name"], r["version"]) for r in ls] == [("sentiment", 1), ("topic", 2)]
    assert ls[0]["n_params"] > 0 and ls[0]["stored_bytes"] > 0
    all_rows = json.loads(run("ls", "--all", "--json").stdout)
    assert len(all_rows) == 3
    log = json.loads(run("log", "topic", "--json").stdout)
    assert [r["version"] for r in log] == [2, 1] and log[1]["tags"] == ["prod"]
    assert log[0]["vector_id"] == log[1]["vector_id"]
    show = json.loads(run("show", "topic@prod", "--json", "--tensors").stdout)
    assert show["ref"] == "topic@1" and show["tags"] == ["prod"]
    assert show["skipped"] == ["position_ids"]
    assert {t["name"] for t in show["tensors"]} == set(load_file(zoo.base)) - {"position_ids"}
    by_prefix = json.loads(run("show", show["vector_id"][:10], "--json").stdout)
    assert by_prefix["vector_id"] == show["vector_id"]
    sql = json.loads(run("sql", "SELECT name, version FROM latest ORDER BY name", "--json").stdout)
    assert sql == [{"name": "sentiment", "version": 1}, {"name": "topic", "version": 2}]


def test_human_output_is_a_table(run, zoo):
    _create(run, zoo, "sentiment")
    out = run("ls").stdout.splitlines()
    assert out[0].split()[:3] == ["REF", "ID", "TASK"]
    assert out[1].startswith("sentiment@1")
    assert "name" in run("sql", "SELECT name FROM versions").stdout


def test_export_is_bit_exact(run, zoo, tmp_path):
    _create(run, zoo, "toxicity")
    out = tmp_path / "tox.safetensors"
    r = run("export", "toxicity", "-o", str(out))
    assert r.stdout == "" and "wrote" in r.stderr
    tau, base, ft = load_file(out), load_file(zoo.base), load_file(zoo.finetuned["toxicity"])
    assert set(tau) == {n for n in base if base[n].is_floating_point()}
    for n in tau:
        assert torch.equal(tau[n], ft[n].float() - base[n].float())


def test_export_to_a_missing_folder_is_bad_input(run, zoo, tmp_path):
    _create(run, zoo, "toxicity")
    r = run("export", "toxicity", "-o", str(tmp_path / "nowhere" / "tox.safetensors"), code=2)
    assert r.stderr.strip().splitlines() == [
        f"tvreg: error: cannot write {tmp_path / 'nowhere' / 'tox.safetensors'}: "
        f"folder {tmp_path / 'nowhere'} does not exist"]
    r = run("export", "toxicity", "-o", str(tmp_path), code=2)  # a folder, not a file
    assert "is a folder" in r.stderr
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("args, needle", [
    (("show", "nope"), "no vector named 'nope'"),
    (("show", "sentiment@7"), "sentiment@7 does not exist"),
    (("show", "sentiment@prod"), "no tag sentiment@prod"),
    (("show", "Bad@@"), "invalid ref"),
    (("log", "nope"), "no vector named"),
    (("tag", "sentiment", "1bad"), "invalid tag"),
    (("sql", "DELETE FROM versions"), "read-only"),
    (("sql", "SELEC 1"), "syntax"),
    (("sql", "COPY versions TO 'x.csv'"), "read-only"),
    (("sql", "SELECT * FROM read_csv('/etc/passwd')"), "disabled"),
    (("create", "Sentiment", "--base", "b", "--finetuned", "f"), "invalid name"),
    (("create", "x", "--base", "missing.safetensors", "--finetuned", "f"), "no such file"),
    (("create", "x", "--base", "b", "--finetuned", "f", "--meta", "novalue"), "KEY=VALUE"),
    (("create", "x", "--base", "b", "--finetuned", "f", "--lr", "-1"), "invalid lr"),
    (("create", "x", "--base", "b", "--finetuned", "f", "--lr", "fast"), "not a valid float"),
    (("gc", "--grace", "-1"), "must be >= 0"),
])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(run, zoo, reg_path, args, needle):
    _create(run, zoo, "sentiment")
    before = snapshot(reg_path)
    r = run(*args, code=2)
    assert needle in r.stderr, r.stderr
    assert r.stdout == ""
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 3  # click usage adds 2
    assert snapshot(reg_path) == before


def test_mismatched_checkpoints_exit_2_and_name_the_tensor(run, zoo, tmp_path, reg_path):
    sd = load_file(zoo.finetuned["topic"])
    sd["mlp.fc1.weight"] = sd["mlp.fc1.weight"][:, :-1].contiguous()
    bad = tmp_path / "bad.safetensors"
    save_file(sd, bad)
    r = run("create", "topic", "--base", str(zoo.base), "--finetuned", str(bad), code=2)
    assert "mlp.fc1.weight" in r.stderr and "differ" in r.stderr
    assert not reg_path.exists()  # the first write would have created it; nothing was written


def test_nonfinite_is_refused_unless_allowed(run, zoo, tmp_path):
    sd = load_file(zoo.finetuned["topic"])
    sd["head.bias"][0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(sd, bad)
    r = run("create", "topic", "--base", str(zoo.base), "--finetuned", str(bad), code=2)
    assert "NaN/Inf" in r.stderr and "head.bias" in r.stderr
    r = run("create", "topic", "--base", str(zoo.base), "--finetuned", str(bad),
            "--allow-nonfinite")
    assert r.stdout.strip() == "topic@1"


def test_verify_exit_codes_and_corruption(run, zoo, reg_path, tmp_path):
    _create(run, zoo, "sentiment")
    assert "ok" in run("verify").stderr
    deep = run("verify", "--deep").stderr
    assert "decoded" in deep and "ok" in deep
    blob = next(p for p in (reg_path / "objects").rglob("*") if p.is_file()
                and p.stat().st_size > 1000)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    r = run("verify", "--json", code=1)
    report = json.loads(r.stdout)
    assert not report["ok"] and any(blob.parent.name + blob.name in p for p in report["problems"])
    r = run("export", "sentiment", "-o", str(tmp_path / "x.safetensors"), code=1)
    assert "corrupted" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_init_gc_reindex(run, zoo, reg_path):
    r = run("init")
    assert "initialized" in r.stderr and (reg_path / "config.json").exists()
    assert "already" in run("init").stderr
    _create(run, zoo, "sentiment")
    report = json.loads(run("gc", "--json").stdout)
    assert report["deleted_objects"] == 0
    (reg_path / "catalog.duckdb").unlink()
    assert "reindexed 1 versions" in run("reindex").stderr
    assert json.loads(run("ls", "--json").stdout)[0]["name"] == "sentiment"


def test_reads_of_a_missing_registry_say_how_to_start(run):
    r = run("ls", code=2)
    assert "no tvreg registry" in r.stderr and "tvreg init" in r.stderr


def test_console_script_in_a_subprocess(zoo, tmp_path):
    env = {**os.environ, "TVREG_HOME": str(tmp_path / "reg")}
    cmd = [sys.executable, "-m", "tvreg.cli"]
    p = subprocess.run([*cmd, "create", "sentiment", "--base", str(zoo.base), "--finetuned",
                        str(zoo.finetuned["sentiment"]), "--task", "sentiment"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "sentiment@1\n"
    p = subprocess.run([*cmd, "sql", "--json", "SELECT name, task FROM versions"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout) == [{"name": "sentiment", "task": "sentiment"}]
    p = subprocess.run([*cmd, "show", "missing"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == "tvreg: error: no vector named 'missing'"


def test_catalog_commands_do_not_import_torch(zoo, tmp_path):
    """ls/sql/log/show start fast: torch (over a second to import) is loaded only for tensors."""
    env = {**os.environ, "TVREG_HOME": str(tmp_path / "reg")}
    subprocess.run([sys.executable, "-m", "tvreg.cli", "create", "topic", "--base", str(zoo.base),
                    "--finetuned", str(zoo.finetuned["topic"])], env=env, check=True,
                   capture_output=True)
    probe = ("import sys; from tvreg.cli.main import cli\n"
             "for args in (['ls'], ['sql', 'SELECT 1'], ['log', 'topic'], ['show', 'topic']):\n"
             "    cli.main(args, standalone_mode=False)\n"
             "print('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "False"
    import tvreg
    assert tvreg.TaskVector.__name__ == "TaskVector"
