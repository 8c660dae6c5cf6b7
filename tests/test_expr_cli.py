"""Issue 14, items 1 and 2: unspaced `a-b` that spells a stored name, and expressions that start
with a minus on the command line (the paper's "forget a task" edit)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import snapshot
from safetensors.torch import load_file

from tvreg.compose.expr import ExpressionError, runs
from tvreg.errors import NotFound


def tau(zoo, task):
    base, ft = load_file(zoo.base), load_file(zoo.finetuned[task])
    return {n: ft[n].float() - base[n].float() for n in base if base[n].is_floating_point()}


@pytest.fixture
def hyphenated(filled, zoo):
    """sentiment, topic, toxicity and 'sentiment-topic' (made from the toxicity fine-tune)."""
    filled.create("sentiment-topic", zoo.base, zoo.finetuned["toxicity"])
    return filled


# --- the parser's runs ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("sent-topic", [("sent-topic", "sent - topic")]),
    ("0.5*sent-topic + x", [("sent-topic", "sent - topic")]),
    ("a-b@2", [("a-b@2", "a - b@2")]),
    ("a-b-c", [("a-b-c", "a - b - c"), ("a-b", "a - b"), ("b-c", "b - c")]),
    ("-a/b", [("a/b", "a / b")]),
    ("a - b", []), ("a- b", []), ('"a-b" - c', []), ("a@2-b", []), ("2*a - 0.5*b", []),
])
def test_runs(text, expected):
    assert [(r.text, r.spaced) for r in runs(text)] == expected


# --- item 1: refused with both spellings ---------------------------------------------------------

@pytest.mark.parametrize("expression", ["sentiment-topic", "0.5*sentiment-topic + toxicity",
                                        "sentiment-topic@1", "-sentiment-topic"])
def test_unspaced_run_spelling_a_stored_name_is_refused(hyphenated, expression):
    with pytest.raises(ExpressionError) as e:
        hyphenated.resolve(expression)
    message = str(e.value)
    assert "'sentiment-topic" in message and "sentiment - topic" in message
    assert '"sentiment-topic' in message  # how to quote it


def test_quoted_means_the_vector_and_spaced_means_the_difference(hyphenated, zoo):
    vector = hyphenated.resolve('"sentiment-topic"').state_dict()
    tox = tau(zoo, "toxicity")
    for n in tox:
        torch.testing.assert_close(vector[n], tox[n], rtol=0, atol=1e-6)
    diff = hyphenated.resolve("sentiment - topic").state_dict()
    a, b = tau(zoo, "sentiment"), tau(zoo, "topic")
    for n in a:
        torch.testing.assert_close(diff[n], a[n] - b[n], rtol=0, atol=1e-6)


def test_unspaced_difference_of_names_that_do_not_spell_a_vector_still_works(filled, zoo):
    diff = filled.resolve("sentiment-topic").state_dict()
    a, b = tau(zoo, "sentiment"), tau(zoo, "topic")
    for n in a:
        torch.testing.assert_close(diff[n], a[n] - b[n], rtol=0, atol=1e-6)


def test_a_missing_part_of_a_split_name_suggests_quoting(filled):
    with pytest.raises(NotFound) as e:
        filled.resolve("sentiment-bf16")
    message = str(e.value)
    assert "no vector named 'bf16'" in message and '"sentiment-bf16"' in message


def test_apply_of_a_hyphenated_name_writes_nothing(hyphenated, zoo, reg_path, run, tmp_path):
    out = tmp_path / "merged.safetensors"
    before = snapshot(reg_path)
    result = run("apply", "sentiment-topic", "--base", str(zoo.base), "-o", str(out), code=2)
    assert "sentiment - topic" in result.stderr and "'sentiment-topic'" in result.stderr
    assert not out.exists() and snapshot(reg_path) == before


# --- item 2: a leading minus on the command line ----------------------------------------------------

def tvreg(reg_path, *args):
    env = {**os.environ, "TVREG_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "tvreg.cli", "--registry", str(reg_path), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_apply_negation_through_a_real_process(filled, zoo, reg_path, tmp_path):
    filled.close()
    out = tmp_path / "forget.safetensors"
    p = tvreg(reg_path, "apply", "-toxicity", "--base", str(zoo.base), "-o", str(out))
    assert p.returncode == 0, p.stderr
    base, merged, t = load_file(zoo.base), load_file(out), tau(zoo, "toxicity")
    for n in t:
        torch.testing.assert_close(merged[n].float(), base[n].float() - t[n], rtol=0, atol=1e-6)


@pytest.mark.parametrize("args, coefs", [
    (["-0.5*toxicity", "-o", "{out}"], {"toxicity": -0.5}),
    (["-o", "{out}", "-toxicity+topic"], {"toxicity": -1.0, "topic": 1.0}),
    (["--lambda", "-1", "topic", "-o", "{out}"], {"topic": -1.0}),  # an option's value stays its value
    (["-toxicity", "--lambda=2", "-o{out}"], {"toxicity": -2.0}),  # glued short option value
    (["-o", "{out}", "--", "-topic"], {"topic": -1.0}),  # `--` still works
])
def test_compose_negation_forms(filled, zoo, run, tmp_path, args, coefs):
    out = tmp_path / "c.safetensors"
    run("compose", *[a.format(out=out) for a in args])
    got = load_file(out)
    taus = {task: tau(zoo, task) for task in coefs}
    for n in got:
        want = sum(c * taus[task][n] for task, c in coefs.items())
        torch.testing.assert_close(got[n], want, rtol=0, atol=1e-6)


def test_a_leading_minus_name_that_reads_as_a_short_option_explains(filled, run, tmp_path):
    result = run("compose", "-only_task", code=2)
    assert "-o" in result.stderr and "-- -only_task" in result.stderr


def test_unknown_long_options_are_still_errors(filled, run, tmp_path):
    result = run("compose", "topic", "--no-such", "-o", str(tmp_path / "x.safetensors"), code=2)
    assert "--no-such" in result.stderr
