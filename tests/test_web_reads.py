"""What the web view reads from the catalog, on a real registry: the lineage walk (a few queries
as it goes, not every version's parents), and results kept once per copy of the catalog."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tvreg
from tvreg.web import queries


@pytest.fixture(scope="module")
def lineage_reg(tmp_path_factory, zoo):
    """sentiment, topic, toxicity; mix = 0.5 sentiment + 0.5 topic, saved under two names (one
    vector, two versions); mix2 = mix - 0.3 toxicity."""
    reg = tvreg.open(tmp_path_factory.mktemp("lineage") / "r")
    for task in ("sentiment", "topic", "toxicity"):
        reg.create(task, zoo.base, zoo.finetuned[task], **zoo.meta[task], similarities=False)
    reg.save_composition("mix", reg.resolve("0.5*sentiment + 0.5*topic"), similarities=False)
    reg.save_composition("mix-copy", reg.resolve("0.5*sentiment + 0.5*topic"),
                         similarities=False)
    reg.save_composition("mix2", reg.resolve("mix - 0.3*toxicity"), similarities=False)
    reg.repo.read_catalog_from_memory()
    yield reg
    reg.close()


def _ids(reg) -> dict[str, str]:
    return {f"{r['name']}@{r['version']}": r["vector_id"]
            for r in reg.catalog.rows("SELECT name, version, vector_id FROM versions")}


def test_lineage_walks_up_and_down(lineage_reg):
    ids = _ids(lineage_reg)
    assert ids["mix@1"] == ids["mix-copy@1"]  # one vector, two versions
    nodes, edges = queries.lineage(lineage_reg, ids["mix2@1"])
    by_ref = {n.ref: n.level for n in nodes}
    assert by_ref == {"mix2@1": 0, "mix@1": -1, "toxicity@1": -1, "sentiment@1": -2,
                      "topic@1": -2}
    assert set(edges) == {(ids["mix@1"], ids["mix2@1"], "1"),
                          (ids["toxicity@1"], ids["mix2@1"], "-0.3"),
                          (ids["sentiment@1"], ids["mix@1"], "0.5"),
                          (ids["topic@1"], ids["mix@1"], "0.5")}
    # down from an operand: the composed vectors, a node named by its first version
    nodes, edges = queries.lineage(lineage_reg, ids["sentiment@1"])
    assert [(n.ref, n.level) for n in nodes] == [("sentiment@1", 0), ("mix@1", 1),
                                                 ("mix2@1", 2)]
    assert len(edges) == 2
    # limits: one generation each way, one node per generation
    nodes, _ = queries.lineage(lineage_reg, ids["mix@1"], up=1, down=1, width=1)
    assert sorted((n.ref, n.level) for n in nodes) == [("mix2@1", 1), ("mix@1", 0),
                                                       ("sentiment@1", -1)]
    # a vector the catalog does not know: itself, no edges
    nodes, edges = queries.lineage(lineage_reg, "0" * 64)
    assert [(n.ref, n.vector_id, n.level) for n in nodes] == [(None, "0" * 64, 0)]
    assert edges == []


def test_summary_is_kept_until_the_catalog_changes(lineage_reg, zoo):
    first = queries.summary(lineage_reg)
    assert queries.summary(lineage_reg) is first  # the same copy: computed once
    assert first["counts"]["versions"] == 6
    copies = lineage_reg.catalog.copies
    lineage_reg.create("parity", zoo.base, zoo.finetuned["toxicity"], similarities=False)
    again = queries.summary(lineage_reg)  # the file changed: a new copy, counted again
    assert lineage_reg.catalog.copies == copies + 1
    assert again is not first and again["counts"]["versions"] == 7
    assert queries.summary(lineage_reg) is again


def test_summary_of_a_catalog_read_from_its_file(tmp_path, zoo):
    reg = tvreg.open(tmp_path / "r")
    reg.create("sentiment", zoo.base, zoo.finetuned["sentiment"], similarities=False)
    first = queries.summary(reg)  # no copy to key it on: computed every time
    assert first == queries.summary(reg) and queries.summary(reg) is not first
    reg.close()


def test_the_web_view_imports_no_torch():
    """The server's pages need no torch (its objects made every full pass of the cyclic
    collector walk 140,000 more)."""
    code = ("import sys; import tvreg.web.app, tvreg.web.server; from tvreg.web import queries; "
            "queries.layers_of([{'tensor': 'h.0.w', 'dot': 1.0, 'n_both_material': 1, "
            "'n_sign_conflicts': 0, 'norm_a': 1.0, 'norm_b': 1.0}]); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
