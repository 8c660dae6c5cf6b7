"""``tvreg serve`` in a real browser: Debian's headless Chromium driven by Playwright, against a
real server (a subprocess) over a registry of real toy fine-tunes. What each page shows (cells,
counts, links, the tooltip, the charts, downloads) is checked against the library's own answers;
hostile metadata must show as text and run nothing; the token's cookie dance is followed as a
browser does it. One registry, one server and one browser for the module."""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import re
import types
from urllib.parse import quote

import pytest

import tvreg
from tvreg.testing import make_toy_zoo
from tvreg.testing.web import CHROMIUM, CHROMIUM_ARGS, tvreg_serve

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the browser tests need playwright (pip install playwright)")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"the browser tests need Chromium at {CHROMIUM} "
                                       "(apt-get install chromium)")

HOSTILE_TASK = "<script>window.__xss=1</script>"
HOSTILE_NOTE = "<img src=x onerror=window.__xss=2>"
EXPRESSION = "0.5*sentiment + topic - toxicity"
TOKEN = "SOMETOKEN123"
SWEEP_LRS = [round(1e-4 * (i + 1), 6) for i in range(14)]
SQL = "SELECT name, version, lr FROM versions WHERE name = 'sweep' ORDER BY version"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A registry (sentiment, topic, toxicity; sentiment@2 tagged prod; sweep@1..14 of one
    checkpoint with different lr; combo@1 composed from three; hostile@1 with a script for a task
    and an img tag in its meta; team/parity@1; all pushed to the directory remote origin) served
    by one ``tvreg serve``."""
    tmp = tmp_path_factory.mktemp("web-browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVREG_HOME", str(tmp / "home"))
        mp.setenv("TVREG_CACHE", str(tmp / "cache"))
        mp.setenv("TVREG_NO_PROGRESS", "1")
        zoo = make_toy_zoo(tmp / "zoo", tasks=("sentiment", "topic", "toxicity", "length",
                                               "parity"))
        reg = tvreg.open(tmp / "registry")
        for task in ("sentiment", "topic", "toxicity"):
            reg.create(task, zoo.base, zoo.finetuned[task], **zoo.meta[task])
        reg.create("sentiment", zoo.base, zoo.finetuned["sentiment"], task="sentiment",
                   dataset="toy-sentiment-v2", lr=0.02, steps=40)
        reg.tag("sentiment@2", "prod")
        for i, lr in enumerate(SWEEP_LRS):  # one checkpoint, new metadata: new versions, no tensors
            reg.create("sweep", zoo.base, zoo.finetuned["topic"], task="sweep", lr=lr,
                       steps=100 + i)
        reg.tag("sweep@7", "best")
        reg.save_composition("combo", reg.resolve(EXPRESSION), task="combo")
        reg.create("hostile", zoo.base, zoo.finetuned["length"], task=HOSTILE_TASK,
                   meta={"note": HOSTILE_NOTE})
        reg.create("team/parity", zoo.base, zoo.finetuned["parity"], **zoo.meta["parity"])
        reg.add_remote("origin", str(tmp / "remote"))
        reg.push("origin")
        with tvreg_serve(tmp / "registry") as server:
            yield types.SimpleNamespace(reg=reg, server=server, url=server.base, tmp=tmp,
                                        base_hash=reg.show("combo@1")["base_hash"])
        reg.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page; the test fails if it logged a console error (a Content-Security-Policy
    violation, a missing resource, an error status) or threw."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
          if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    yield pg
    context.close()
    assert problems == [], problems


@pytest.fixture
def raw_page(browser):
    """A fresh page for a test that expects error statuses (Chromium logs each as an error)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def goto(page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)
    # the policy the console checks rely on reached the browser
    assert "script-src 'self'" in response.headers["content-security-policy"]


def column(page, table: str, n: int) -> list[str]:
    """The texts of column ``n`` (from 1) of a table's body."""
    return [t.strip() for t in
            page.locator(f"{table} tbody tr td:nth-child({n})").all_inner_texts()]


def field(page, table: str, label: str) -> str:
    """The value next to ``label`` in a two-column table of fields."""
    return page.locator(f"{table} tr").filter(
        has=page.locator("th", has_text=re.compile(f"^{re.escape(label)}$"))
    ).locator("td").inner_text().strip()


def submit(page, selector: str = "#filters button[type=submit]") -> None:
    with page.expect_navigation():
        page.click(selector)


def refs_of(rows) -> list[str]:
    return [f"{r['name']}@{r['version']}" for r in rows]


# --- overview -------------------------------------------------------------------------------------


def test_overview_counts_and_latest_table(site, page):
    latest = site.reg.ls()
    every = site.reg.ls(all_versions=True)
    goto(page, site.url + "/")
    cards = page.locator(".card").all_inner_texts()
    assert f"{len(latest)} names" in cards
    assert f"{len(every)} versions" in cards
    assert f"{len({r['vector_id'] for r in every})} distinct vectors" in cards
    assert "1 base" in cards
    n_pairs = len(site.reg.sql("SELECT 1 FROM similarities"))
    assert f"{n_pairs} similarity pairs" in cards
    assert page.locator("#total").inner_text() == f"{len(latest)} matches"
    shown = column(page, "#versions", 1)
    assert sorted(shown) == sorted(refs_of(latest))
    tasks = dict(zip(shown, column(page, "#versions", 3), strict=True))
    assert tasks["sentiment@2"] == "sentiment" and tasks["combo@1"] == "combo"
    tags = dict(zip(shown, column(page, "#versions", 10), strict=True))
    assert tags["sentiment@2"] == "prod" and tags["topic@1"] == ""
    ids = dict(zip(shown, column(page, "#versions", 2), strict=True))
    assert all(ids[r["name"] + "@" + str(r["version"])] == r["vector_id"][:12] for r in latest)
    # the bases table: one base with every name
    assert column(page, "#bases", 2) == [str(len(latest))]
    assert column(page, "#bases", 3) == [str(len(every))]


def test_overview_search_and_filters_through_the_form(site, page):
    every = site.reg.ls(all_versions=True)
    goto(page, site.url + "/")
    page.fill("input[name=q]", "swe")
    submit(page)
    assert "q=swe" in page.url
    assert column(page, "#versions", 1) == ["sweep@14"]
    assert page.locator("#total").inner_text() == "1 match"

    goto(page, site.url + "/")
    page.select_option("select[name=task]", "sweep")
    page.check("input[name=all]")
    submit(page)
    assert page.locator("h2", has_text="All versions").count() == 1
    assert sorted(column(page, "#versions", 1)) == sorted(
        refs_of(r for r in every if r["task"] == "sweep"))
    # the form keeps what was chosen
    assert page.locator("select[name=task]").input_value() == "sweep"
    assert page.locator("input[name=all]").is_checked()

    goto(page, site.url + "/")
    page.select_option("select[name=tag]", "prod")
    page.check("input[name=all]")
    submit(page)
    assert column(page, "#versions", 1) == ["sentiment@2"]
    assert column(page, "#versions", 10) == ["prod"]

    goto(page, site.url + "/")
    page.check("input[name=all]")
    page.fill("input[name=lr_min]", "0.0003")
    page.fill("input[name=lr_max]", "6e-4")
    submit(page)
    expected = [r for r in every if r["lr"] is not None and 3e-4 <= r["lr"] <= 6e-4]
    assert len(expected) == 4
    assert sorted(column(page, "#versions", 1)) == sorted(refs_of(expected))
    assert page.locator("#total").inner_text() == "4 matches"


def test_overview_bad_filter_is_a_one_line_error(site, raw_page):
    page = raw_page
    goto(page, site.url + "/")
    page.fill("input[name=lr_min]", "lots")
    with page.expect_navigation() as nav:
        page.click("#filters button[type=submit]")
    assert nav.value.status == 400
    assert page.locator("#error").inner_text() == "invalid lr_min 'lots': a number"
    assert "Traceback" not in page.content()
    with page.expect_navigation():  # and back
        page.click("text=Back to the overview")
    assert page.locator("#versions tbody tr").count() > 1


def test_overview_sort_by_clicking_a_column_header(site, page):
    every = site.reg.ls(all_versions=True)
    goto(page, site.url + "/?all=1&per=50")
    before = column(page, "#versions", 1)
    with page.expect_navigation():
        page.locator("#versions thead a.sort", has_text="lr").click()
    assert "sort=lr" in page.url and "order=asc" in page.url
    after = column(page, "#versions", 1)
    by_lr = sorted(every, key=lambda r: (r["lr"] is None, r["lr"] or 0.0, r["name"],
                                         -r["version"]))
    assert after == refs_of(by_lr)
    assert after != before
    lrs = [float(t) for t in column(page, "#versions", 5) if t]
    assert lrs == sorted(lrs)
    assert page.locator("#versions thead a.sort.on.asc").inner_text().startswith("lr")
    with page.expect_navigation():  # again: the other way
        page.locator("#versions thead a.sort", has_text="lr").click()
    assert "order=desc" in page.url
    lrs = [float(t) for t in column(page, "#versions", 5) if t]
    assert lrs == sorted(lrs, reverse=True)


def test_overview_pages(site, page):
    every = site.reg.ls(all_versions=True)
    assert len(every) > 20
    goto(page, site.url + "/")
    page.check("input[name=all]")
    page.select_option("select[name=per]", "10")
    submit(page)
    pages = math.ceil(len(every) / 10)
    seen: list[str] = []
    for n in range(1, pages + 1):
        assert page.locator("#pages span").inner_text() == f"page {n} of {pages}"
        rows = column(page, "#versions", 1)
        assert len(rows) == (10 if n < pages else len(every) - 10 * (pages - 1))
        seen += rows
        assert (page.locator("#pages a[rel=prev]").count() == 1) == (n > 1)
        if n < pages:
            with page.expect_navigation():
                page.click("#pages a[rel=next]")
    assert page.locator("#pages a[rel=next]").count() == 0
    newest_first = sorted(sorted(every, key=lambda r: (r["name"], -r["version"])),
                          key=lambda r: r["created_at"], reverse=True)
    assert seen == refs_of(newest_first)  # every version once, newest first
    with page.expect_navigation():
        page.click("#pages a[rel=prev]")
    assert f"page {pages - 1} of {pages}" == page.locator("#pages span").inner_text()


def test_follow_a_version_link(site, page):
    goto(page, site.url + "/")
    with page.expect_navigation():
        page.locator("#versions a", has_text="team/parity@1").click()
    assert page.url == site.url + "/versions/team/parity/1"
    assert page.locator("h1").inner_text() == "team/parity@1"
    assert field(page, "#metadata", "task") == "parity"
    with page.expect_navigation():
        page.click("text=all versions of team/parity")
    assert page.url == site.url + "/names/team/parity"
    assert column(page, "#history", 1) == ["team/parity@1"]


# --- a version ------------------------------------------------------------------------------------


def test_version_page_of_a_composition(site, page):
    reg = site.reg
    info = reg.show("combo@1", tensors=True)
    goto(page, site.url + "/versions/combo/1")
    assert page.locator("h1").inner_text() == "combo@1"
    assert field(page, "#metadata", "vector id") == info["vector_id"]
    assert field(page, "#metadata", "task") == "combo"
    assert field(page, "#size", "tensors").startswith(str(info["n_tensors"]))
    assert field(page, "#size", "parameters") == f"{info['n_params']:,}"
    # the norm, against the tensors themselves
    tensors = reg.get("combo@1").tensors()
    norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors.values()))
    assert float(field(page, "#size", "norm ‖τ‖")) == pytest.approx(norm, rel=1e-5)
    # one row per tensor, each with its norm
    names = column(page, "#tensors", 1)
    assert names == [t["name"] for t in info["tensors"]]
    assert len(names) == info["n_tensors"]
    for name, text in zip(names, column(page, "#tensors", 5), strict=True):
        expected = float(tensors[name].double().norm())
        assert float(text) == pytest.approx(expected, rel=1e-4, abs=1e-6), name
    # the recipe
    recipe = json.loads(page.locator("#recipe pre").inner_text())
    assert recipe["expression"] == EXPRESSION
    assert [(o["ref"], o["coef"]) for o in recipe["operands"]] == [
        ("sentiment@2", 0.5), ("topic@1", 1.0), ("toxicity@1", -1.0)]


def test_lineage_graph_links_to_the_parents(site, page):
    goto(page, site.url + "/versions/combo/1")
    nodes = page.locator("#lineage svg g.node")
    labels = sorted(t.strip() for t in nodes.locator("text").all_text_contents())
    # a parent shows as the recipe names it (sentiment@2), not as the first version holding
    # its vector (sentiment@1 holds the same one)
    assert labels == ["combo@1", "sentiment@2", "topic@1", "toxicity@1"]
    assert page.locator("#lineage g.node.focus text").text_content() == "combo@1"
    assert page.locator("#lineage path.edge").count() == 3
    assert sorted(page.locator("#lineage text.edge-label").all_text_contents()) == [
        "×-1", "×0.5", "×1"]
    with page.expect_navigation():
        nodes.filter(has_text="toxicity@1").click()
    assert page.url == site.url + "/versions/toxicity/1"
    assert page.locator("h1").inner_text() == "toxicity@1"
    # and from the parent, its child
    assert page.locator("#lineage g.node.focus text").text_content() == "toxicity@1"
    with page.expect_navigation():
        page.locator("#lineage svg g.node").filter(has_text="combo@1").click()
    assert page.url == site.url + "/versions/combo/1"


def test_most_similar_matches_the_library(site, page):
    every = site.reg.similar("combo@1", 1000)
    similar = []  # one row per vector: its best-ranked version, the others counted beside it
    for s in every:
        if s["vector_id"] not in {x["vector_id"] for x in similar} and len(similar) < 10:
            similar.append(s)
    assert len(similar) < len(every)  # the sweep's copies share vectors
    goto(page, site.url + "/versions/combo/1")
    refs = column(page, "#similar", 1)
    assert [r.split(" and ")[0] for r in refs] == [s["ref"] for s in similar]
    sweep = [r for r in refs if r.startswith("sweep@")]
    assert sweep and sweep[0].endswith("more with this vector")
    assert column(page, "#similar", 3) == [
        ("" if s["exact"] else "~") + f"{s['cosine']:.4f}" for s in similar]
    first = similar[0]
    with page.expect_navigation():
        page.locator("#similar tbody tr").first.locator("a", has_text="per layer").click()
    assert page.locator("h1").inner_text() == f"combo@1 · {first['ref']}"


# --- the base's heatmap and a pair ---------------------------------------------------------------


def _stored_cosine(reg, a: str, b: str) -> float:
    va, vb = sorted((reg.show(a)["vector_id"], reg.show(b)["vector_id"]))
    rows = reg.sql(f"SELECT cosine FROM similarities WHERE vector_a = '{va}' "
                   f"AND vector_b = '{vb}'")
    assert len(rows) == 1
    return rows[0]["cosine"]


def test_heatmap_tooltip_and_click_through_to_the_pair(site, page):
    reg = site.reg
    refs = sorted(refs_of(reg.ls()))
    matrix = reg.similarity_matrix(refs)
    goto(page, site.url + f"/bases/{site.base_hash}")
    assert page.locator("#heatmap rect.cell").count() == len(refs) ** 2
    assert page.locator("#heatmap text.row-label").all_text_contents() == matrix.labels
    a, b = "combo@1", "toxicity@1"
    i, j = matrix.labels.index(a), matrix.labels.index(b)
    value = f"{'' if matrix.exact[i][j] else '~'}{matrix.values[i][j]:.4f}"
    tip = page.locator("#tip")
    assert tip.is_hidden()
    cell = f'#heatmap rect.cell[data-a="{a}"][data-b="{b}"]'
    page.hover(cell)
    tip.wait_for(state="visible")
    assert tip.inner_text() == f"{a} · {b}: cosine {value}"
    page.mouse.move(2, 2)  # off the chart: the tip goes
    tip.wait_for(state="hidden")
    # a name with a / in it has its cell too
    page.hover(f'#heatmap rect.cell[data-a="team/parity@1"][data-b="{a}"]')
    tip.wait_for(state="visible")
    k = matrix.labels.index("team/parity@1")
    assert tip.inner_text().endswith(f"{matrix.values[k][i]:.4f}")
    # two names of one vector (sweep is topic's checkpoint again): no pair page to link to
    same = 'rect.cell[data-a="sweep@14"][data-b="topic@1"]'
    assert page.locator(f"#heatmap {same}").count() == 1
    assert page.locator(f"#heatmap a {same}").count() == 0
    assert page.locator(f'#heatmap a rect.cell[data-a="{a}"][data-b="{b}"]').count() == 1
    page.hover(f"#heatmap {same}")
    assert tip.inner_text() == "sweep@14 · topic@1: cosine 1.0000 (the same vector)"

    with page.expect_navigation():
        page.click(cell)
    assert page.url == site.url + f"/pair?a={quote(a)}&b={quote(b)}"
    stored = _stored_cosine(reg, a, b)
    assert page.locator("#pair-cosine").inner_text() == f"{stored:.6f}"
    assert stored == pytest.approx(matrix.values[i][j], abs=1e-9)
    # the toy model has no numbered layers: one bar row per tensor, with the stored cosines
    va, vb = sorted((reg.show(a)["vector_id"], reg.show(b)["vector_id"]))
    per_tensor = {r["tensor"]: r["cosine"] for r in reg.sql(
        f"SELECT tensor, cosine FROM tensor_similarities WHERE vector_a = '{va}' "
        f"AND vector_b = '{vb}'")}
    assert page.locator("h2", has_text="Per tensor (no numbered layers)").count() == 1
    bars = page.locator("#layers svg g.bar-row")
    assert bars.count() == len(per_tensor) == reg.show(a)["n_tensors"]
    for k in range(bars.count()):
        label = bars.nth(k).locator("text.row-label").text_content()
        assert f"cosine {per_tensor[label]:.4f}" in bars.nth(k).get_attribute("data-tip")
    assert sorted(column(page, "#tensor-table", 1)) == sorted(per_tensor)
    bars.first.hover()  # the chart's rows have tooltips too
    page.locator("#tip").wait_for(state="visible")
    assert page.locator("#tip").inner_text().startswith(
        bars.first.locator("text.row-label").text_content() + ": cosine ")


# --- SQL -----------------------------------------------------------------------------------------


def test_sql_console_result_and_downloads(site, page):
    columns, rows = site.reg.sql_table(SQL)
    goto(page, site.url + "/sql")
    page.fill("#sql-form textarea", SQL)
    submit(page, "#sql-form button[type=submit]")
    assert "q=" in page.url
    assert page.locator("#sql-form textarea").input_value() == SQL
    assert page.locator("#sql-count").inner_text().startswith(f"{len(rows)} rows")
    assert page.locator("#sql-result thead th").all_inner_texts() == columns
    shown = [[c.strip() for c in page.locator("#sql-result tbody tr").nth(k)
              .locator("td").all_inner_texts()] for k in range(len(rows))]
    assert page.locator("#sql-result tbody tr").count() == len(rows) == len(SWEEP_LRS)
    assert shown == [[name, str(version), f"{lr:g}"] for name, version, lr in rows]

    with page.expect_download() as info:
        page.click("#csv")
    download = info.value
    assert download.suggested_filename == "query.csv"
    got = list(csv.reader(pathlib.Path(download.path()).read_text().splitlines()))
    assert got[0] == columns
    assert [(n, int(v), float(lr)) for n, v, lr in got[1:]] == rows

    with page.expect_download() as info:
        page.click("#json")
    download = info.value
    assert download.suggested_filename == "query.json"
    assert json.loads(pathlib.Path(download.path()).read_text()) == [
        dict(zip(columns, row, strict=True)) for row in rows]


def test_sql_console_bad_query_is_one_line(site, page):
    goto(page, site.url + "/sql")
    page.fill("#sql-form textarea", "SELEC name FROM versions")
    submit(page, "#sql-form button[type=submit]")
    error = page.locator("#sql-error").inner_text()
    assert error and "\n" not in error
    assert "syntax error" in error.lower()
    assert page.locator("#sql-result").count() == 0
    assert "Traceback" not in page.content()
    # a statement that writes is refused the same way
    goto(page, site.url + "/sql?q=" + quote("DELETE FROM versions"))
    assert page.locator("#sql-error").count() == 1
    assert "\n" not in page.locator("#sql-error").inner_text()
    assert len(site.reg.ls(all_versions=True)) > 20


def test_sql_examples_run(site, page):
    goto(page, site.url + "/sql")
    page.click("details summary")
    examples = page.locator("details li a")
    assert examples.count() >= 2
    with page.expect_navigation():
        examples.nth(1).click()
    assert page.locator("#sql-error").count() == 0
    assert page.locator("#sql-result tbody tr").count() > 0


# --- remotes -------------------------------------------------------------------------------------


def test_remotes_and_a_remote_index(site, page):
    remote = site.reg.remote_ls("origin")
    goto(page, site.url + "/remotes")
    assert column(page, "#remotes", 1) == ["origin"]
    assert column(page, "#remotes", 2) == [site.reg.remote("origin").url]
    with page.expect_navigation():
        page.locator("#remotes a", has_text="origin").click()
    assert page.url == site.url + "/remotes/origin"
    assert sorted(column(page, "#remote-versions", 1)) == sorted(refs_of(remote))
    with page.expect_navigation():
        page.click("text=all versions")
    every = site.reg.remote_ls("origin", all_versions=True)
    assert len(every) > len(remote)
    assert sorted(column(page, "#remote-versions", 1)) == sorted(refs_of(every))
    tags = dict(zip(column(page, "#remote-versions", 1), column(page, "#remote-versions", 9),
                    strict=True))
    assert tags["sentiment@2"] == "prod" and tags["sweep@7"] == "best"


# --- hostile text --------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "texts"), [
    ("/", [HOSTILE_TASK]),
    ("/?all=1&q=hostile", [HOSTILE_TASK]),
    ("/names/hostile", [HOSTILE_TASK, HOSTILE_NOTE]),
    ("/versions/hostile/1", [HOSTILE_TASK, HOSTILE_NOTE]),
    ("/remotes/origin", [HOSTILE_TASK]),
    ("/sql?q=" + quote("SELECT task, meta FROM versions WHERE name = 'hostile'"),
     [HOSTILE_TASK, HOSTILE_NOTE]),
])
def test_hostile_metadata_shows_as_text_and_runs_nothing(site, page, path, texts):
    goto(page, site.url + path)
    body = page.locator("body").inner_text()
    for text in texts:
        assert text in body, path
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("img").count() == 0
    assert page.locator("main script").count() == 0
    # the task also sits in the overview's task filter, as an option's text
    if path == "/":
        options = page.locator("select[name=task] option").all_inner_texts()
        assert HOSTILE_TASK in options


def test_the_policy_blocks_an_injected_inline_script(site, raw_page):
    """What the console checks stand on: a script put into a page (as an escaping bug would)
    does not run, and Chromium reports the policy's refusal as a console error."""
    page = raw_page
    goto(page, site.url + "/")
    with page.expect_console_message(lambda m: m.type == "error") as message:
        page.evaluate("""() => { const s = document.createElement("script");
                                 s.textContent = "window.__xss = 3"; document.body.append(s); }""")
    assert "Content Security Policy" in message.value.text
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_hostile_task_filter_through_the_form(site, page):
    goto(page, site.url + "/")
    page.select_option("select[name=task]", HOSTILE_TASK)
    submit(page)
    assert column(page, "#versions", 1) == ["hostile@1"]
    assert column(page, "#versions", 3) == [HOSTILE_TASK]
    assert page.evaluate("typeof window.__xss") == "undefined"


# --- the token -----------------------------------------------------------------------------------


def test_token_cookie_and_redirect(site, browser):
    with tvreg_serve(site.tmp / "registry", "--token", TOKEN) as server:
        assert server.url == server.base + f"/?token={TOKEN}"
        context = browser.new_context()
        page = context.new_page()
        try:
            response = page.goto(server.base + "/")
            assert response is not None and response.status == 403
            assert "needs its token" in page.locator("body").inner_text()
            response = page.goto(server.base + "/names/sentiment?token=WRONGTOKEN99")
            assert response is not None and response.status == 403
            assert context.cookies() == []

            response = page.goto(server.base + f"/?task=topic&token={TOKEN}")
            assert response is not None and response.status == 200
            assert page.url == server.base + "/?task=topic"  # the token is gone from the address
            assert response.request.redirected_from is not None
            assert response.request.redirected_from.response().status == 303
            cookies = context.cookies()
            assert [(c["name"], c["value"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
                ("tvreg_token", TOKEN, True, "Strict")]
            assert column(page, "#versions", 1) == ["topic@1"]
            with page.expect_navigation():  # navigation goes on with the cookie alone
                page.locator("header nav a", has_text="Bases").click()
            assert page.url == server.base + "/bases"
            assert page.locator("h1").inner_text() == "Bases"
            with page.expect_navigation():
                page.click("#bases a.mono")
            assert page.locator("#heatmap rect.cell").count() > 0
            api = page.request.get(server.base + "/api/versions")
            assert api.status == 200 and len(api.json()) == len(site.reg.ls())
        finally:
            context.close()
