"""`tvreg similar` and `tvreg similarities` on real registries."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

import tvreg
from tvreg.testing import make_toy_zoo


@pytest.fixture
def three(run, zoo, reg_path):
    for task in ("sentiment", "topic", "toxicity"):
        run("create", task, "--base", str(zoo.base), "--finetuned", str(zoo.finetuned[task]))
    return reg_path


def test_similar_table_and_json_match_the_library(run, three):
    with tvreg.open(three) as reg:
        want = reg.similar("topic", k=10)
    rows = json.loads(run("similar", "topic", "--json").stdout)
    assert rows == want and len(rows) == 2
    text = run("similar", "topic").stdout.splitlines()
    assert text[0].split() == ["ref", "vector", "cosine", "sign_conflicts", "alignment"]
    assert [line.split()[0] for line in text[1:]] == [r["ref"] for r in want]
    assert text[1].split()[2] == f"{want[0]['cosine']:.6f}"
    assert len(json.loads(run("similar", "topic", "--top", "1", "--json").stdout)) == 1


@pytest.mark.parametrize("args, needle", [
    (("similar", "topic", "--top", "0"), "--top"),
    (("similar", "nope"), "nope"),
    (("similar",), "give one REF"),
    (("similar", "topic", "sentiment"), "give one REF"),
    (("similar", "topic", "--plot", "x.png"), "--plot needs --matrix"),
    (("similarities", "topic", "--rebuild"), "give no REF"),
])
def test_bad_input_exits_2(run, three, args, needle):
    r = run(*args, code=2)
    assert needle in r.stderr


def test_matrix_table_json_and_skipped_refs(run, three, tmp_path):
    data = json.loads(run("similar", "--matrix", "--json").stdout)
    assert data["labels"] == ["sentiment@1", "topic@1", "toxicity@1"]
    assert data["matrix"][0][0] == 1.0 and data["matrix"][0][1] == data["matrix"][1][0]
    table = run("similar", "--matrix", "topic", "sentiment").stdout.splitlines()
    assert table[0].split() == ["topic@1", "sentiment@1"]
    assert table[1].split() == ["topic@1", "1.000", f"{data['matrix'][1][0]:.3f}"]
    with tvreg.open(three) as reg:
        assert data == reg.similarity_matrix().to_json()
    other = make_toy_zoo(tmp_path / "other", tasks=("topic",), seed=1)
    run("create", "other", "--base", str(other.base), "--finetuned", str(other.finetuned["topic"]))
    r = run("similar", "--matrix", "topic", "other", "sentiment")
    assert "skipped other@1: another base model than topic@1" in r.stderr
    assert "other@1" not in r.stdout
    r = run("similar", "--matrix", code=2)  # newest of every name spans two bases
    assert "2 bases" in r.stderr


def test_matrix_plot_writes_a_png(run, three, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out = tmp_path / "heat.png"
    r = run("similar", "--matrix", "--plot", str(out))
    assert f"wrote {out}" in r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(str(out))
    # 3 labels: a 4.8 x 3.8 inch figure (cells plus the colorbar) at 100 dpi
    assert img.shape == (380, 480, 4)
    # the alignments' heatmap: the same figure, other pixels (another scale and values)
    other = tmp_path / "alignment.png"
    run("similar", "--matrix", "--by", "alignment", "--plot", str(other))
    img2 = matplotlib.image.imread(str(other))
    assert img2.shape == img.shape and (img2 != img).any()


def test_plot_into_a_missing_folder_is_bad_input_before_any_output(run, three, tmp_path):
    pytest.importorskip("matplotlib")
    r = run("similar", "--matrix", "--plot", str(tmp_path / "nowhere" / "heat.png"), code=2)
    assert r.stdout == ""  # refused before the matrix is printed
    assert r.stderr.strip() == (f"tvreg: error: cannot write {tmp_path / 'nowhere' / 'heat.png'}"
                                f": folder {tmp_path / 'nowhere'} does not exist")


def test_plot_without_matplotlib_says_how_to_get_it(run, three, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    r = run("similar", "--matrix", "--plot", str(tmp_path / "x.png"), code=2)
    assert "pip install 'tvreg[plot]'" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_no_similarities_then_similarities_and_rebuild(run, zoo):
    for task in ("sentiment", "topic"):
        run("create", task, "--base", str(zoo.base), "--finetuned", str(zoo.finetuned[task]),
            "--no-similarities")
    assert json.loads(run("sql", "SELECT count(*) AS n FROM similarities", "--json").stdout)[0]["n"] == 0
    r = run("similar", "topic", code=2)
    assert "tvreg similarities" in r.stderr
    counts = json.loads(run("similarities", "--json").stdout)
    assert counts == {"vectors": 2, "pairs": 1}
    assert json.loads(run("similarities", "--json").stdout) == {"vectors": 0, "pairs": 0}
    r = run("similarities", "--rebuild")
    assert "2 vector(s) and 1 pair(s)" in r.stderr
    assert len(json.loads(run("similar", "topic", "--json").stdout)) == 1


def test_rebuild_is_idempotent_and_keeps_the_values(run, three):
    inserted = json.loads(run("similar", "--matrix", "--json").stdout)
    rebuilt = []
    for _ in range(2):
        counts = json.loads(run("similarities", "--rebuild", "--json").stdout)
        assert counts == {"vectors": 3, "pairs": 3}
        rebuilt.append(run("similar", "--matrix", "--json").stdout)
    assert rebuilt[0] == rebuilt[1]  # the batch pass gives the same bits every time
    # and the insert's values but for the last bits (its sums run in another order)
    again = json.loads(rebuilt[0])
    assert again["labels"] == inserted["labels"] and again["exact"] == inserted["exact"]
    assert np.allclose(np.array(again["matrix"], dtype=float),
                       np.array(inserted["matrix"], dtype=float), rtol=1e-12, atol=0)
    assert json.loads(run("similarities", "--json").stdout) == {"vectors": 0, "pairs": 0}


def test_similarities_for_refs_covers_only_their_base(run, zoo, tmp_path):
    other = make_toy_zoo(tmp_path / "other", tasks=("topic",), seed=1)
    for task in ("sentiment", "topic"):
        run("create", task, "--base", str(zoo.base), "--finetuned", str(zoo.finetuned[task]),
            "--no-similarities")
    run("create", "other", "--base", str(other.base), "--finetuned", str(other.finetuned["topic"]),
        "--no-similarities")
    r = run("similarities", "topic")
    assert "computed statistics of 2 vector(s) and 1 pair(s)" in r.stderr
    run("similar", "other", code=2)  # its base was not covered
    assert json.loads(run("similarities", "--json").stdout) == {"vectors": 1, "pairs": 0}
    assert json.loads(run("similar", "other", "--json").stdout) == []


def test_compose_save_no_similarities(run, three):
    run("compose", "sentiment + topic", "--save", "multi", "--no-similarities")
    pairs = "SELECT count(*) AS n FROM similarities"
    assert json.loads(run("sql", pairs, "--json").stdout)[0]["n"] == 3
    run("similar", "multi", code=2)
    assert json.loads(run("similarities", "--json").stdout) == {"vectors": 1, "pairs": 3}
    rows = json.loads(run("similar", "multi", "--json").stdout)
    assert [r["ref"] for r in rows][:2] in (["sentiment@1", "topic@1"], ["topic@1", "sentiment@1"])
    run("compose", "sentiment - topic", "--save", "diff")  # computed on save by default
    assert json.loads(run("sql", pairs, "--json").stdout)[0]["n"] == 10


def test_undefined_values_print_as_dash_and_null(run, zoo):
    run("create", "sentiment", "--base", str(zoo.base),
        "--finetuned", str(zoo.finetuned["sentiment"]))
    run("create", "zero", "--base", str(zoo.base), "--finetuned", str(zoo.base))  # a zero vector
    assert run("similar", "zero").stdout.splitlines()[1].split()[2:] == ["-", "-", "-"]
    rows = json.loads(run("similar", "zero", "--json").stdout)
    assert rows[0]["cosine"] is None and rows[0]["sign_conflict_rate"] is None
    assert rows[0]["alignment"] is None  # a side whose matrices are all zero
    table = run("similar", "--matrix").stdout.splitlines()
    assert table[1].split() == ["sentiment@1", "1.000", "-"]
    assert table[2].split() == ["zero@1", "-", "-"]
    data = json.loads(run("similar", "--matrix", "--json").stdout)
    assert data["matrix"][0][1] is None and data["matrix"][1][1] is None


def test_estimates_are_marked(run, zoo, reg_path):
    for task in ("sentiment", "topic", "toxicity"):
        run("create", task, "--base", str(zoo.base), "--finetuned", str(zoo.finetuned[task]),
            "--no-similarities")
    from tvreg.similarity import upkeep

    with tvreg.open(reg_path) as reg:  # statistics and sketches only, no exact pair
        assert upkeep.update(reg, exact_limit=1) == {"vectors": 3, "pairs": 0}
        want = reg.similar("topic")
    assert want and not any(r["exact"] for r in want)
    r = run("similar", "topic")
    assert [line.split()[2] for line in r.stdout.splitlines()[1:]] == [
        f"~{w['cosine']:.6f}" for w in want]
    assert "~: estimated from sketches" in r.stderr
    first_row = json.loads(run("similar", "--matrix", "--json").stdout)["matrix"][0]
    r = run("similar", "--matrix")
    assert r.stdout.splitlines()[1].split()[1:] == ["1.000", *(f"~{v:.3f}" for v in first_row[1:])]
    assert "~: estimated from sketches" in r.stderr
    # a base this small is within the exact limit: `tvreg similarities` computes the pairs
    assert json.loads(run("similarities", "--json").stdout) == {"vectors": 0, "pairs": 3}
    r = run("similar", "topic")
    assert "~" not in r.stdout and "estimated" not in r.stderr


def test_empty_registry_matrix(run, tmp_path):
    run("init")
    r = run("similar", "--matrix")
    assert r.stdout == "" and "no vectors to compare" in r.stderr
    assert json.loads(run("similar", "--matrix", "--json").stdout)["labels"] == []
    r = run("similar", "--matrix", "--plot", str(tmp_path / "e.png"), code=2)
    assert "nothing to plot" in r.stderr and not (tmp_path / "e.png").exists()


def test_heatmap_grows_to_fit_long_labels(tmp_path):
    """Long names (`sentiment_restaurants_oracle@1`) were cut off at the image's left edge: no
    label may touch the border, whatever its length."""
    pytest.importorskip("matplotlib")
    import matplotlib.image
    import numpy as np

    from tvreg.similarity.compute import SimilarityMatrix
    from tvreg.similarity.plot import heatmap

    labels = ["a@1", "a_rather_long_name_of_a_task_vector@12", "b@1"]
    values = np.array([[1.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 1.0]])
    m = SimilarityMatrix(labels=labels, vector_ids=["0" * 64] * 3, values=values,
                         exact=np.ones((3, 3), dtype=bool), skipped=[])
    out = tmp_path / "long.png"
    heatmap(m, out)
    img = matplotlib.image.imread(str(out))[..., :3]
    for edge in (img[:, 0], img[:, -1], img[0, :], img[-1, :]):
        assert np.all(edge == 1.0), "something is drawn on the border: a label is cut off"
