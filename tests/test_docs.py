"""The examples in docs/python.md run as doctests against a real registry and real checkpoints."""

from __future__ import annotations

import doctest
import pathlib

import torch

import tvreg

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_python_md_examples_run(tmp_path, zoo):
    globs = {"tvreg": tvreg, "torch": torch, "zoo": zoo, "registry_dir": tmp_path / "reg",
             "out_dir": tmp_path}
    result = doctest.testfile(str(DOCS / "python.md"), module_relative=False, globs=globs,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                              raise_on_error=False, verbose=False)
    assert result.attempted > 120
    assert result.failed == 0


def test_sql_md_examples_run(filled):
    """Every statement in docs/sql.md's examples runs on a real registry (with similarities)."""
    text = (DOCS / "sql.md").read_text()
    block = text[text.index("## Examples"):]
    start = block.index("```sql") + len("```sql")
    block = block[start:block.index("```", start)]
    statements = ["\n".join(line for line in part.splitlines() if not line.startswith("--"))
                  for part in block.split(";")]
    statements = [s.strip() for s in statements if s.strip()]
    assert len(statements) >= 10
    for statement in statements:
        filled.sql(statement)  # raises SQLError if it does not run
    best = filled.sql(statements[-5])  # the 5 versions most similar to sentiment@1
    assert [r["other_name"] for r in best] == [r["name"] for r in filled.similar("sentiment@1", k=5)]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    """The README's ten-line example runs as written (in an empty folder) and does what it says."""
    text = (DOCS.parent / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start:text.index("```", start)]
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[{'name': 'sentiment', 'version': 1, 'task': 'sentiment'")
    assert printed[1].startswith("[('toxicity@1', ")
    with tvreg.open(tmp_path / "registry") as reg:
        assert [r["name"] for r in reg.ls()] == ["sentiment", "topic", "toxicity"]
    assert (tmp_path / "multi.safetensors").stat().st_size > 0
