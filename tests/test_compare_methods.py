"""compare_methods (Python and ``tvreg compare-methods``): several merge methods on the same
stored vectors of the toy zoo, λ chosen on a real validation score, test at that λ; the rows
are search_coefficients' own results, and every bad input is refused before anything runs."""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap

import pytest
import torch
from helpers import snapshot
from safetensors.torch import load_file

import tvreg
from tvreg.testing.toy import ToyClassifier, accuracy

EXPR = "sentiment + topic + toxicity"
GRID = [0.3, 0.7, 1.2]
TASKS = ("sentiment", "topic", "toxicity")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, zoo):
    """A registry holding sentiment@1, topic@1, toxicity@1, made once for the module:
    compare_methods writes nothing into it (checked by the bad-input tests)."""
    path = tmp_path_factory.mktemp("compare") / "registry"
    with tvreg.open(path) as reg:
        for task, ft in zoo.finetuned.items():
            reg.create(task, zoo.base, ft, **zoo.meta[task])
        yield path, reg


@pytest.fixture
def filled(shared):
    return shared[1]


@pytest.fixture
def reg_path(shared):
    return shared[0]


def mean_accuracy(seed: int):
    """The toy model's mean accuracy over the three tasks on held-out data of ``seed``; counts
    its calls."""
    model = ToyClassifier()

    def evaluate(state_dict):
        evaluate.calls += 1
        model.load_state_dict(state_dict)
        return sum(accuracy(model, t, n=300, seed=seed) for t in TASKS) / len(TASKS)
    evaluate.calls = 0
    return evaluate


def per_task(seed: int):
    model = ToyClassifier()

    def test(state_dict):
        model.load_state_dict(state_dict)
        return {t: accuracy(model, t, n=300, seed=seed) for t in TASKS}
    return test


METHODS = ["task_arithmetic", ("ties", {"density": 0.3}), "tsv",
           "dare_linear:density=0.5,seed=3", "consensus"]
#: each method as search_coefficients is called for it
AS_PARAMS = [("task_arithmetic", {}), ("ties", {"density": 0.3}), ("tsv", {}),
             ("dare_linear", {"density": 0.5, "seed": 3}), ("consensus", {})]


def test_rows_are_search_coefficients_results(filled, zoo):
    evaluate = mean_accuracy(seed=7)
    res = filled.compare_methods(EXPR, evaluate, methods=METHODS, grid=GRID, base=zoo.base,
                                 test=per_task(seed=8))
    rows = res["rows"]
    assert [r["method"] for r in rows] == [m for m, _ in AS_PARAMS]
    assert res["grid"] == GRID and res["expression"] == EXPR
    assert evaluate.calls == len(METHODS) * len(GRID)
    for row, (method, params) in zip(rows, AS_PARAMS, strict=True):
        alone = filled.search_coefficients(EXPR, evaluate, GRID, base=zoo.base, method=method,
                                           **params)
        assert row["scores"] == alone["rows"]
        assert (row["best_lambda"], row["validation"]) == (alone["best_lambda"],
                                                           alone["best_score"])
        scores = [s["score"] for s in row["scores"]]
        # the best λ is the argmax (the first one on a tie), its score the validation score
        assert row["best_lambda"] == GRID[scores.index(max(scores))]
        assert row["at_edge"] == (row["best_lambda"] in (min(GRID), max(GRID)))
        assert row["validation"] == max(scores)
        for key, value in params.items():
            assert row["params"][key] == value
        assert row["seconds"] >= 0 and row["eval_seconds"] > 0
        assert set(row["test"]) == set(TASKS)
    # the scores differ between methods and λ: the evaluation is not a constant
    assert len({s["score"] for r in rows for s in r["scores"]}) > 3
    # the best method is the highest validation score, the first listed on a tie
    top = max(r["validation"] for r in rows)
    assert res["best"] is next(r for r in rows if r["validation"] == top)


def test_test_score_is_the_applied_model_at_the_chosen_lambda(filled, zoo, tmp_path):
    """``test`` sees θ_base + λ·merged at the chosen λ: what `tvreg apply --lambda λ` writes."""
    test = per_task(seed=8)
    res = filled.compare_methods(EXPR, mean_accuracy(seed=7), grid=GRID, base=zoo.base,
                                 methods=[("ties", {"density": 0.3}), "iso_c"], test=test)
    for row in res["rows"]:
        out = tmp_path / f"{row['method']}.safetensors"
        comp = filled.resolve(EXPR, method=row["method"], lam=row["best_lambda"],
                              **row["params"])
        filled.apply(comp, zoo.base, out)
        assert row["test"] == test(load_file(out))


def test_default_methods_and_parameters(filled, zoo):
    from tvreg.compose.compare import DEFAULT_METHODS

    evaluate = mean_accuracy(seed=7)
    res = filled.compare_methods(EXPR, evaluate, grid=[1.0], base=zoo.base)
    assert tuple(r["method"] for r in res["rows"]) == DEFAULT_METHODS
    by = {r["method"]: r for r in res["rows"]}
    assert by["ties"]["params"]["density"] == 0.2 and by["ties"]["label"] == "ties (density=0.2)"
    assert by["dare_ties"]["params"]["density"] == 0.5 and by["dare_ties"]["params"]["seed"] == 0
    assert (by["breadcrumbs"]["params"]["density"], by["breadcrumbs"]["params"]["gamma"]) \
        == (0.2, 0.01)
    assert by["iso_cts"]["params"]["common_fraction"] == 0.8
    assert all(r["test"] is None for r in res["rows"])
    # params replace a default per method name; a method named with its own wins over both
    res = filled.compare_methods(EXPR, evaluate, grid=[1.0], base=zoo.base,
                                 methods=["ties", "ties:density=0.6"],
                                 params={"ties": {"density": 0.4}})
    assert [r["params"]["density"] for r in res["rows"]] == [0.4, 0.6]


def test_slerp_and_karcher_use_the_base_given(filled, zoo):
    """The weight-space methods interpolate the base given (no stored base here)."""
    res = filled.compare_methods("sentiment + topic", mean_accuracy(seed=7), grid=[1.0],
                                 base=zoo.base, methods=["slerp", "karcher"])
    assert [r["label"] for r in res["rows"]] == ["slerp (t=0.5)", "karcher"]


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["nope"]}, "unknown merge method 'nope'"),
    ({"methods": ["slerp"]}, "slerp (t=0.5): slerp interpolates between two models"),
    ({"methods": ["ties", "slerp"]}, "give two vectors"),        # the second: nothing merged
    ({"methods": [("ties", {"density": 2})]}, "density must be in (0, 1]"),
    ({"methods": ["tsv:density=0.2"]}, "density has no meaning for tsv"),
    ({"methods": ["ties:density"]}, "is not KEY=VALUE"),
    ({"methods": ["ties:colour=red"]}, "unknown merge parameter(s) colour"),
    ({"methods": ["ties", ("ties", {"density": 0.2})]}, "listed twice"),
    ({"methods": []}, "no method to compare"),
    ({"methods": "ties"}, "a list of method names"),
    ({"params": {"nope": {}}}, "params for unknown method(s) nope"),
    ({"grid": []}, "the coefficient grid is empty"),
    ({"grid": [0.5, float("nan")]}, "every λ must be a finite number"),
    ({"grid": "0.5"}, "not the string"),
    ({"evaluate": 3}, "eval command must be a function of a state dict, or a command"),
    ({"evaluate": "echo 1"}, "does not name the model"),
    ({"evaluate": "no-such-program-tvreg {model}"}, "is not an executable program"),
    ({"test": "echo 'unclosed {model}"}, "test command"),
    ({"base": "no/such/base.safetensors"}, "no such file or directory"),
    ({"base": "missing-tensor"}, "the base does not fit the vectors: 1 tensor(s) missing"),
])
def test_bad_input_runs_nothing(filled, zoo, reg_path, kwargs, message):
    evaluate = mean_accuracy(seed=7)
    if kwargs.get("base") == "missing-tensor":
        sd = load_file(zoo.base)
        del sd["head.bias"]
        kwargs = {**kwargs, "base": sd}
    args = {"evaluate": evaluate, "grid": GRID, "base": zoo.base, **kwargs}
    before = snapshot(reg_path)
    with pytest.raises(tvreg.InvalidInput) as e:
        filled.compare_methods(EXPR, args.pop("evaluate"), **args)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert evaluate.calls == 0
    assert snapshot(reg_path) == before


# --- the command line ---------------------------------------------------------------------------

#: the score of a model file: a deterministic function of its weights that λ and the method
#: move (numpy only, so that each run starts fast)
SCORE = textwrap.dedent("""\
    import os, sys
    from safetensors.numpy import load_file
    if os.environ.get("SCORE_MARK"):
        open(os.environ["SCORE_MARK"], "a").write(sys.argv[1] + "\\n")
    if len(sys.argv) > 2 and sys.argv[2] == "fail":
        sys.exit(3)
    sd = load_file(sys.argv[1])
    print("scoring", sys.argv[1])                     # noise before the score: ignored
    if len(sys.argv) > 2 and sys.argv[2] == "words":
        print("accuracy: high")
    else:
        fc1 = float(abs(sd["mlp.fc1.weight"]).mean())
        print(-abs(float(sd["head.bias"].sum()) - 0.3) - 0.01 * fc1)
    """)


def score_of(state_dict) -> float:
    """SCORE's function, in process."""
    bias = state_dict["head.bias"].numpy()
    fc1 = state_dict["mlp.fc1.weight"].numpy()
    return -abs(float(bias.sum()) - 0.3) - 0.01 * float(abs(fc1).mean())


@pytest.fixture
def script(tmp_path, monkeypatch):
    path = tmp_path / "score.py"
    path.write_text(SCORE)
    monkeypatch.setenv("SCORE_MARK", str(tmp_path / "ran.txt"))
    work = tmp_path / "work"
    work.mkdir()
    return path, work, tmp_path / "ran.txt"


def cmd(path, *extra: str) -> str:
    return " ".join([sys.executable, str(path), "{model}", *extra])


def test_cli_runs_the_command_on_each_model(filled, zoo, run, script):
    path, work, ran = script
    result = run("compare-methods", EXPR, "--base", str(zoo.base), "--eval-cmd", cmd(path),
                 "--test-cmd", cmd(path), "--method", "ties:density=0.3", "--method", "tsv",
                 "--lambdas", "0.3,0.7,1.2", "--work-dir", str(work), "--json")
    doc = json.loads(result.stdout)
    # the same numbers as the Python API with the score computed in process: the file the
    # command read is θ_base + λ·merged, bit for bit
    same = filled.compare_methods(EXPR, score_of, methods=["ties:density=0.3", "tsv"],
                                  grid=GRID, base=zoo.base, test=score_of)
    for got, want in zip(doc["rows"], same["rows"], strict=True):
        assert got["scores"] == want["scores"]
        assert (got["best_lambda"], got["validation"], got["test"]) == \
            (want["best_lambda"], want["validation"], want["test"])
    assert doc["best"]["label"] == same["best"]["label"]
    assert len({s["score"] for r in doc["rows"] for s in r["scores"]}) > 2
    files = ran.read_text().splitlines()
    assert len(files) == 2 * (3 + 1) and all(f.startswith(str(work)) for f in files)
    assert os.listdir(work) == []                    # every temporary file removed
    assert "ties (density=0.3): merged in" in result.stderr

    table = run("compare-methods", EXPR, "--base", str(zoo.base), "--eval-cmd", cmd(path),
                "--method", "task_arithmetic", "--lambdas", "0.5", "--work-dir", str(work))
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["method", "params", "lambda", "validation", "test", "merge_s"]
    assert lines[1].split()[:2] == ["task_arithmetic", "0.5"]
    assert lines[-1].startswith("best: task_arithmetic, lambda 0.5, validation ")
    assert os.listdir(work) == []


def test_the_model_file_is_what_apply_writes(filled, zoo, tmp_path):
    """The file a command scores holds, bit for bit, the tensors `tvreg apply --lambda λ`
    writes, with the expression and the method's λ in its metadata."""
    from safetensors import safe_open

    keep = tmp_path / "kept.safetensors"
    copy = tmp_path / "copy.py"
    copy.write_text("import shutil, sys\nshutil.copy(sys.argv[1], sys.argv[2])\nprint(0.5)\n")
    filled.compare_methods(EXPR, [sys.executable, str(copy), "{model}", str(keep)],
                           methods=["ties:density=0.3"], grid=[0.7], base=zoo.base)
    applied = tmp_path / "applied.safetensors"
    filled.apply(filled.resolve(EXPR, method="ties", density=0.3, lam=0.7), zoo.base, applied)
    got, want = load_file(keep), load_file(applied)
    assert list(got) == list(want)
    assert all(torch.equal(got[n], want[n]) and got[n].dtype == want[n].dtype for n in want)
    with safe_open(keep, "pt") as f:
        meta = f.metadata()
    assert meta["tvreg.expression"] == EXPR
    assert meta["tvreg.eval"] == "ties (density=0.3), lambda 0.7, validation"


@pytest.mark.parametrize("args, code, message, runs", [
    (["--eval-cmd", "CMD fail"], 1, "failed (ties (density=0.2), lambda 0.5, validation): "
     "exit status 3", 1),
    (["--eval-cmd", "CMD words"], 2, "printed 'accuracy: high' as its last line", 1),
    (["--eval-cmd", "CMD", "--test-cmd", "CMD fail"], 1, "test command", 2),
    (["--eval-cmd", "echo 1"], 2, "does not name the model", 0),
    (["--eval-cmd", "no-such-program-tvreg {model}"], 2, "not an executable program", 0),
    (["--eval-cmd", "CMD", "--method", "slerp"], 2, "give two vectors", 0),
    (["--eval-cmd", "CMD", "--method", "ties", "--method", "tsv:gamma=0.1"], 2,
     "gamma has no meaning for tsv", 0),
    (["--eval-cmd", "CMD", "--lambdas", "0.5,x"], 2, "'x' is not a number", 0),
    (["--eval-cmd", "CMD", "--lambdas", "0.5,inf"], 2, "every λ must be a finite number", 0),
    (["--eval-cmd", "CMD", "--base", "nope"], 2, "nope: no such file or directory", 0),
    (["--eval-cmd", "CMD", "--work-dir", "WORK/missing"], 2, "is not a folder", 0),
])
def test_cli_failures(filled, zoo, run, script, reg_path, args, code, message, runs):
    path, work, ran = script
    args = [a.replace("CMD", cmd(path)).replace("WORK", str(work)) for a in args]
    if "--method" not in args:
        args += ["--method", "ties"]
    if "--lambdas" not in args:
        args += ["--lambdas", "0.5"]
    if "--base" not in args:
        args += ["--base", str(zoo.base)]
    if "--work-dir" not in args:
        args += ["--work-dir", str(work)]
    before = snapshot(reg_path)
    result = run("compare-methods", EXPR, *args, code=code)
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert (len(ran.read_text().splitlines()) if ran.exists() else 0) == runs
    assert os.listdir(work) == []
    assert snapshot(reg_path) == before


def test_interrupted_evaluation_leaves_no_file(filled, zoo, tmp_path):
    """An evaluation that raises (here: an interrupt) still removes the temporary folder."""
    from tvreg.compose.eval_command import CommandEvaluator

    calls = []

    def evaluate(state_dict):
        calls.append(1)
        raise KeyboardInterrupt

    work = tmp_path / "work"
    work.mkdir()
    path = tmp_path / "score.py"
    path.write_text(SCORE)
    with pytest.raises(KeyboardInterrupt):
        filled.compare_methods(EXPR, evaluate, methods=["ties"], grid=[0.5], base=zoo.base,
                               test=cmd(path), work_dir=work)
    assert calls == [1] and os.listdir(work) == []
    with CommandEvaluator(cmd(path), work_dir=work) as ev:
        sd = load_file(zoo.base)
        assert math.isclose(ev(sd), score_of(sd)) and ev.calls == 1
        assert os.listdir(work) != []                 # its folder, empty between runs
        assert os.listdir(os.path.join(work, os.listdir(work)[0])) == []
    assert os.listdir(work) == []
    assert torch.equal(load_file(zoo.base)["head.bias"], sd["head.bias"])


def test_search_coefficients_refuses_a_grid_that_is_not_finite(filled, zoo):
    def never(state_dict):
        raise AssertionError("nothing is evaluated")

    for grid in ([0.5, float("inf")], [float("nan")], [True], ["x"]):
        with pytest.raises(tvreg.InvalidInput, match="finite number"):
            filled.search_coefficients(EXPR, never, grid, base=zoo.base)
