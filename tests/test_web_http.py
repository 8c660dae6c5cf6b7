"""``tvreg serve`` over HTTP (a real uvicorn in a subprocess on loopback): every page and API
route, the API's shapes against the CLI's ``--json``, and the security cases: writes refused,
tokens, the Host check, escaping, path escapes out of the static folder, the CSP, SQL errors and
limits, a registry opened by URL (a directory and S3)."""

from __future__ import annotations

import http.client
import json
import pathlib
import re
import uuid

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("jinja2")

import tvreg  # noqa: E402
from tvreg.testing import make_toy_zoo  # noqa: E402
from tvreg.testing.web import tvreg_serve  # noqa: E402

HOSTILE_TASK = "<script>alert('task')</script>"
HOSTILE_META = '"><img src=x onerror=alert(1)>'
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def web_registry(tmp_path_factory):
    """A registry of real fine-tunes: three tasks, a second version with a tag, a composition,
    a hostile task and metadata, a name with a slash; pushed to a directory remote."""
    root = tmp_path_factory.mktemp("web")
    zoo = make_toy_zoo(root / "zoo")
    path = root / "reg"
    with tvreg.open(path) as reg:
        for task, ft in zoo.finetuned.items():
            reg.create(task, zoo.base, ft, **zoo.meta[task])
        reg.create("sentiment", zoo.base, zoo.finetuned["sentiment"], task="sentiment",
                   dataset="sst2-v2", lr=5e-3, steps=40, meta={"note": HOSTILE_META})
        reg.tag("sentiment@2", "prod")
        reg.create("team/hostile", zoo.base, zoo.finetuned["topic"], task=HOSTILE_TASK,
                   dataset="d<b>x</b>", meta={"onerror": HOSTILE_META})
        reg.save_composition("multi", reg.resolve("0.5*sentiment + topic - toxicity"),
                             task="multi")
        reg.add_remote("origin", str(root / "remote"))
        reg.push("origin")
    return path


@pytest.fixture(scope="module")
def server(web_registry):
    with tvreg_serve(web_registry, "--sql-rows", "50", "--sql-timeout", "1") as s:
        yield s


@pytest.fixture(scope="module")
def guarded(web_registry):
    with tvreg_serve(web_registry, "--token", TOKEN) as s:
        yield s


def _cli_json(registry, *args):
    from click.testing import CliRunner

    from tvreg.cli.main import cli

    r = CliRunner().invoke(cli, ["--registry", str(registry), *args, "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _json(server, path):
    status, headers, body = server.get(path)
    assert status == 200, (path, body[:300])
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)


def _html(server, path, status=200):
    code, headers, body = server.get(path)
    assert code == status, (path, code, body[:500])
    assert headers["content-type"].startswith("text/html")
    return body.decode()


def _base_hash(registry):
    with tvreg.open(registry) as reg:
        return reg.show("sentiment@1")["base_hash"]


# --- the API has the CLI's shapes --------------------------------------------------------------

@pytest.mark.parametrize(("path", "args"), [
    ("/api/versions", ("ls",)),
    ("/api/versions?all=1", ("ls", "--all")),
    ("/api/versions/sentiment/2", ("show", "sentiment@2")),
    ("/api/versions/team/hostile/1?tensors=1", ("show", "team/hostile@1", "--tensors")),
    ("/api/names/sentiment", ("log", "sentiment")),
    ("/api/similar/sentiment@1?k=3", ("similar", "sentiment@1", "--top", "3")),
    ("/api/similar/topic?by=alignment", ("similar", "topic", "--by", "alignment")),
    ("/api/matrix?refs=sentiment@1,topic@1,multi@1",
     ("similar", "--matrix", "sentiment@1", "topic@1", "multi@1")),
    ("/api/sql?q=SELECT%20name,%20version,%20meta%20FROM%20versions%20ORDER%20BY%201,2",
     ("sql", "SELECT name, version, meta FROM versions ORDER BY 1,2")),
    ("/api/bases", ("base", "ls")),
    ("/api/remotes/origin/versions", ("ls", "--remote", "origin")),
])
def test_api_matches_the_cli_json(server, web_registry, path, args):
    assert _json(server, path) == _cli_json(web_registry, *args)


def test_api_matrix_of_a_base_is_the_matrix_of_its_newest_versions(server, web_registry):
    base = _base_hash(web_registry)
    got = _json(server, f"/api/matrix?base={base[:10]}")
    refs = sorted(got["labels"])
    assert refs == sorted(["multi@1", "sentiment@2", "team/hostile@1", "topic@1", "toxicity@1"])
    assert got == _cli_json(web_registry, "similar", "--matrix", *refs)


def test_api_pair_has_per_tensor_and_per_layer_values(server, web_registry):
    got = _json(server, "/api/pair?a=sentiment@1&b=topic")
    with tvreg.open(web_registry) as reg:
        stored = reg.sql("SELECT cosine FROM similar_versions WHERE name = 'sentiment' AND "
                         "version = 1 AND other_name = 'topic'")[0]["cosine"]
        n_tensors = reg.show("sentiment@1")["n_tensors"]
    assert got["a"] == "sentiment@1" and got["b"] == "topic@1"
    assert got["cosine"] == pytest.approx(stored, abs=1e-12)
    assert len(got["tensors"]) == n_tensors
    # the per-layer cosine is the summed dots over the summed norms
    dot = sum(t["dot"] for t in got["tensors"])
    sq_a = sum(t["norm_a"] ** 2 for t in got["tensors"])
    sq_b = sum(t["norm_b"] ** 2 for t in got["tensors"])
    assert sum(g["tensors"] for g in got["layers"]) == n_tensors
    assert got["layers"][0]["cosine"] == pytest.approx(dot / (sq_a * sq_b) ** 0.5)
    assert got["cosine"] == pytest.approx(dot / (sq_a * sq_b) ** 0.5, rel=1e-9)


def test_api_remotes(server):
    assert [r["name"] for r in _json(server, "/api/remotes")] == ["origin"]


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/api/versions/nope/1", 404, "nope"),
    ("/api/names/nope", 404, "no vector named 'nope'"),
    ("/api/similar/sentiment@9", 404, "sentiment@9"),
    ("/api/similar/sentiment?by=magic", 400, "magic"),
    ("/api/similar/sentiment?k=0", 400, "invalid k"),
    ("/api/matrix?base=ffff", 404, "no base"),
    ("/api/matrix?base=a&refs=b", 400, "not both"),
    ("/api/matrix?refs=" + ",".join(["topic"] * 501), 400, "too many refs (501): at most 500"),
    ("/api/matrix?base=ffff&n=501", 400, "invalid n 501"),
    ("/api/sql", 400, "missing parameter 'q'"),
    ("/api/sql?q=DROP%20TABLE%20versions", 400, "read-only"),
    ("/api/sql?q=SELECT%201&format=xml", 400, "json or csv"),
    ("/api/pair?a=sentiment@1", 400, "missing parameter 'b'"),
    ("/api/pair?a=sentiment@1&b=sentiment@2", 400, "same vector"),
    ("/api/remotes/nope/versions", 404, "nope"),
    ("/api/nothing-here", 404, "nothing at /api/nothing-here"),
])
def test_api_errors_are_one_line_json(server, path, status, message):
    code, headers, body = server.get(path)
    assert code == status, body
    error = json.loads(body)["error"]
    assert message in error and "\n" not in error and "Traceback" not in error


# --- pages ---------------------------------------------------------------------------------------

def test_every_page_renders(server, web_registry):
    base = _base_hash(web_registry)
    for path, expect in [
        ("/", "Latest version of each name"),
        ("/?all=1&sort=lr&order=desc&per=10&page=1", "All versions"),
        ("/names/sentiment", "prod"),
        ("/names/team/hostile", "team/hostile@1"),
        ("/versions/multi/1", "Recipe"),
        ("/versions/team/hostile/1", "Tensors"),
        ("/bases", base[:16]),
        (f"/bases/{base}", "heatmap"),
        (f"/bases/{base}?by=alignment&n=3", "alignment heatmap"),
        ("/pair?a=sentiment@1&b=topic@1", "sign-conflict rate"),
        ("/sql", "read-only statement"),
        ("/sql?q=SELECT%20count(*)%20AS%20n%20FROM%20versions", ">6</td>"),
        ("/remotes", "origin"),
        ("/remotes/origin?all=1", "sentiment@2"),
    ]:
        assert expect in _html(server, path), path


def _versions_table(server, query):
    """The refs in the overview's table, in order, and the count it shows."""
    page = _html(server, "/" + query)
    table = page[page.index('<table id="versions">'):]
    table = table[:table.index("</table>")]
    total = re.search(r'id="total">([0-9,]+) match', page).group(1)
    return re.findall(r'<a href="/versions/[^"]+">([^<]+)</a>', table), int(total), page


def test_overview_filters_sort_and_pages(server):
    refs, total, _ = _versions_table(server, "?task=sentiment&all=1")
    assert sorted(refs) == ["sentiment@1", "sentiment@2"] and total == 2
    refs, total, _ = _versions_table(server, "?q=SENT")  # any case; latest versions only
    assert refs == ["sentiment@2"] and total == 1
    refs, _, _ = _versions_table(server, "?tag=prod&all=1")
    assert refs == ["sentiment@2"]
    refs, _, _ = _versions_table(server, "?lr_min=0.006&lr_max=0.02")
    assert "topic@1" in refs and "sentiment@2" not in refs  # sentiment@2 has lr 5e-3
    refs, total, _ = _versions_table(server, "?q=%25")  # a LIKE wildcard is taken literally
    assert refs == [] and total == 0
    refs, _, _ = _versions_table(server, "?all=1&sort=lr&order=asc")
    assert refs[0] == "sentiment@2" and refs[-2:] == ["multi@1", "team/hostile@1"]  # nulls last
    refs, _, _ = _versions_table(server, "?all=1&sort=name&order=desc")
    assert refs == sorted(refs, key=lambda r: (r.split("@")[0], -int(r.split("@")[1])),
                          reverse=True) or refs[0] == "toxicity@1"
    refs, total, page = _versions_table(server, "?all=1&per=10&sort=name&order=asc")
    assert total == 6 and len(refs) == 6 and "page 1 of 1" in page
    for bad, message in [("lr_min=x", "invalid lr_min"), ("sort=drop", "invalid sort"),
                         ("order=up", "invalid order"), ("page=0", "invalid page"),
                         ("per=5000", "invalid per"), ("base=Bad%20Name", "invalid name")]:
        page = _html(server, f"/?{bad}", 400)
        assert message in page and "Traceback" not in page


def test_hostile_text_is_escaped_everywhere(server, web_registry):
    pages = ["/", "/?all=1", "/names/team/hostile", "/versions/team/hostile/1",
             "/versions/sentiment/2", "/names/sentiment", "/remotes/origin?all=1",
             f"/bases/{_base_hash(web_registry)}",
             "/sql?q=SELECT%20task,%20meta%20FROM%20versions",
             "/sql?q=SELECT%20'%3Cscript%3Ex%3C/script%3E'%20AS%20%22%3Cb%3E%22",
             "/?q=%3Cscript%3Ealert(1)%3C/script%3E",
             "/versions/%3Cscript%3E/1", "/pair?a=%3Cscript%3E&b=x"]
    for path in pages:
        code, _, body = server.get(path)
        text = body.decode()
        assert "<script>alert" not in text and "<img src=x" not in text, path
        assert "<script>x" not in text and "<b>x</b>" not in text, path
        assert text.count("<script") == 1, path  # the one script tag: /static/app.js
    assert "&lt;script&gt;alert(&#39;task&#39;)&lt;/script&gt;" in _html(server, "/")
    assert "&lt;img src=x onerror=alert(1)&gt;" in _html(server, "/versions/sentiment/2")


def test_pages_send_a_content_security_policy(server):
    for path in ["/", "/api/versions", "/static/style.css", "/nothing", "/sql?q=bad"]:
        _, headers, _ = server.get(path)
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"


def test_no_inline_script_or_style_in_pages(server, web_registry):
    for path in ["/", "/versions/multi/1", f"/bases/{_base_hash(web_registry)}",
                 "/pair?a=sentiment@1&b=topic@1", "/sql?q=SELECT%201"]:
        text = _html(server, path)
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path
        assert not re.search(r"\sstyle=", text) and "<style" not in text, path
        assert not re.search(r"\son[a-z]+=", text), path


def test_sql_console_errors_and_limits(server):
    page = _html(server, "/sql?q=SELEC%20nonsense")
    assert 'id="sql-error"' in page and "Traceback" not in page
    error = re.search(r'id="sql-error">([^<]*)<', page).group(1)
    assert "\n" not in error and "syntax error" in error.lower()
    for statement in ["DELETE FROM versions", "ATTACH '/tmp/x.db'", "COPY versions TO '/tmp/x'",
                      "SET threads=1", "INSTALL httpfs"]:
        page = _html(server, "/sql?q=" + statement.replace(" ", "%20"))
        assert "not allowed" in page or "read-only" in page, statement
    page = _html(server, "/sql?q=SELECT%20*%20FROM%20read_csv('/etc/passwd')")
    assert 'id="sql-error"' in page and "root:" not in page
    page = _html(server, "/sql?q=SELECT%20*%20FROM%20range(1000)")
    assert "cut at the limit of 50" in page and page.count("<tr>") == 51  # header + 50 rows
    code, headers, body = server.get("/api/sql?q=SELECT%20*%20FROM%20range(1000)")
    assert code == 200 and headers["x-tvreg-truncated"] == "true"
    assert len(json.loads(body)) == 50
    code, _, body = server.get("/api/sql?q=SELECT%20count(*)%20FROM%20range(10000000000000)%20a,"
                               "%20range(10)%20b")
    assert code == 400 and "time limit" in json.loads(body)["error"]


def test_sql_downloads(server):
    q = "SELECT%20name,%20version,%20meta%20FROM%20versions%20ORDER%20BY%201,%202"
    code, headers, body = server.get(f"/api/sql?q={q}&format=csv")
    assert code == 200 and headers["content-type"].startswith("text/csv")
    assert "attachment" in headers["content-disposition"]
    import csv
    import io

    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == ["name", "version", "meta"]
    assert rows[1][:2] == ["multi", "1"] and len(rows) == 7
    hostile = [r for r in rows if r[0] == "team/hostile"][0]
    assert json.loads(hostile[2]) == {"onerror": HOSTILE_META}
    code, headers, body = server.get(f"/api/sql?q={q}&format=json&download=1")
    assert "attachment" in headers["content-disposition"] and len(json.loads(body)) == 6


def test_head_works_and_every_other_method_is_refused(server, web_registry):
    code, headers, body = server.get("/", method="HEAD")
    assert code == 200 and body == b""
    before = sorted(p.relative_to(web_registry).as_posix() for p in web_registry.rglob("*")
                    if p.is_file() and p.name != "catalog.duckdb.lock")
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"]:
        for path in ["/", "/api/versions", "/api/sql?q=SELECT%201", "/static/style.css",
                     "/nothing"]:
            code, headers, body = server.get(path, method=method)
            assert code == 405, (method, path)
            assert headers["allow"] == "GET, HEAD"
    after = sorted(p.relative_to(web_registry).as_posix() for p in web_registry.rglob("*")
                   if p.is_file() and p.name != "catalog.duckdb.lock")
    assert after == before


def _raw_get(server, path: str, headers: dict[str, str] | None = None):
    """A GET with the path sent exactly as written (urllib and browsers normalise dots)."""
    host, port = server.base.split("//", 1)[1].rsplit(":", 1)
    con = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        con.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for k, v in (headers or {"Host": f"{host}:{port}"}).items():
            con.putheader(k, v)
        con.endheaders()
        r = con.getresponse()
        return r.status, r.read()
    finally:
        con.close()


@pytest.mark.parametrize("path", [
    "/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/app.py",
    "/static/%2e%2e%2fapp.py", "/static/..%5capp.py", "/static/%252e%252e/app.py",
    "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/static/../../../../etc/passwd",
    "/static/templates/../../app.py", "/../registry/web/app.py",
])
def test_no_path_outside_the_static_folder(server, path):
    status, body = _raw_get(server, path.replace("registry/web/app.py", "app.py"), {
        "Host": "127.0.0.1"})
    assert status == 404, (path, status)
    assert b"import" not in body and b"root:" not in body


def test_a_symlink_in_the_static_folder_is_not_followed(server):
    from tvreg.web.app import STATIC

    link = pathlib.Path(STATIC) / f"link-{uuid.uuid4().hex[:8]}.txt"
    try:
        link.symlink_to("/etc/passwd")
    except OSError:
        pytest.skip("cannot make a symlink in the package's static folder")
    try:
        status, body = _raw_get(server, "/static/" + link.name, {"Host": "127.0.0.1"})
    finally:
        link.unlink()
    assert status == 404 and b"root:" not in body
    assert _raw_get(server, "/static/style.css", {"Host": "127.0.0.1"})[0] == 200


def test_a_foreign_host_header_is_refused_without_a_token(server):
    """DNS rebinding: a page of evil.example resolving its name to 127.0.0.1 cannot read it."""
    for host in ["evil.example", "evil.example:80", "127.0.0.1.evil.example"]:
        status, body = _raw_get(server, "/api/versions", {"Host": host})
        assert status == 403 and b"Host" in body, host
    for host in ["127.0.0.1", "localhost:1", "[::1]:8000"]:
        assert _raw_get(server, "/api/versions", {"Host": host})[0] == 200, host


def test_the_token_is_checked_on_every_request(guarded):
    for path in ["/", "/api/versions", "/static/style.css", "/nothing"]:
        code, _, body = guarded.get(path)
        assert code == 403 and b"token" in body, path
    assert guarded.get("/api/versions", {"Authorization": "Bearer wrong-token"})[0] == 403
    assert guarded.get("/api/versions?token=wrong-token")[0] == 403
    assert guarded.get("/", {"Cookie": "tvreg_token=wrong-token"})[0] == 403
    assert guarded.get("/api/versions", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert guarded.get("/", {"Cookie": f"tvreg_token={TOKEN}"})[0] == 200
    code, headers, _ = guarded.get(f"/api/versions?token={TOKEN}")
    assert code == 200 and f"tvreg_token={TOKEN}" in headers["set-cookie"]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    # a page: the cookie is set and the browser sent to the same address without the token
    host, port = guarded.base.split("//", 1)[1].rsplit(":", 1)
    con = http.client.HTTPConnection(host, int(port), timeout=10)
    con.request("GET", f"/names/sentiment?token={TOKEN}&x=1")
    r = con.getresponse()
    assert r.status == 303 and r.getheader("location") == "/names/sentiment?x=1"
    assert TOKEN in r.getheader("set-cookie")
    con.close()
    # with a token, any Host is fine (the token is the guard)
    assert _raw_get(guarded, "/api/versions", {"Host": "tvreg.team.example",
                                               "Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_a_non_loopback_host_gets_a_generated_token(web_registry):
    with tvreg_serve(web_registry, "--host", "0.0.0.0") as s:
        assert "?token=" in s.url
        token = s.url.split("?token=", 1)[1]
        assert len(token) >= 24
        assert "a token was generated" in s.wait_for("a token was generated")
        assert s.get("/api/versions")[0] == 403
        assert s.get("/api/versions", {"Authorization": f"Bearer {token}"})[0] == 200


@pytest.mark.parametrize(("args", "message"), [
    (("--token", "short"), "invalid --token"),
    (("--port", "70000"), "invalid --port"),
    (("--host", "no such host.invalid"), "invalid --host"),
    (("--refresh", "0"), "invalid --refresh"),
])
def test_bad_serve_options_exit_2(web_registry, args, message):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "tvreg.cli", "--registry", str(web_registry),
                        "serve", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_serve_without_the_web_extra_names_it(monkeypatch):
    import sys

    from tvreg.errors import InvalidInput
    from tvreg.web.server import require_web_extra

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(InvalidInput, match=r"pip install 'tvreg\[web\]'"):
        require_web_extra()


def test_the_server_sees_new_versions(web_registry, zoo, tmp_path):
    """A create by another process while serving: the next page shows it (the in-memory
    catalog is copied again when the file changes)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(web_registry, copy)
    with tvreg_serve(copy) as s:
        before = _json(s, "/api/versions")
        with tvreg.open(copy) as reg:
            reg.create("late", zoo.base, zoo.finetuned["topic"], task="late-task")
        after = _json(s, "/api/versions")
        assert [r["name"] for r in after] == sorted([r["name"] for r in before] + ["late"])
        assert "late-task" in _html(s, "/?q=late")


# --- a registry opened by URL ------------------------------------------------------------------

def test_serve_a_directory_remote_by_url(web_registry):
    remote = web_registry.parent / "remote"
    with tvreg_serve(f"file://{remote}") as s:
        page = _html(s, "/")
        assert "read-only URL" in page and "sentiment@2" in page
        assert "Tensors" in _html(s, "/versions/multi/1")
        got = _json(s, "/api/versions")
        assert {r["name"] for r in got} >= {"sentiment", "topic", "toxicity", "multi"}


def test_a_registry_opened_by_url_is_read_again(web_registry, zoo, tmp_path):
    """--refresh: a version pushed while serving appears without a restart."""
    import time

    remote = tmp_path / "remote"
    with tvreg.open(tmp_path / "local") as reg:
        reg.create("first", zoo.base, zoo.finetuned["topic"])
        reg.add_remote("origin", str(remote))
        reg.push("origin")
        with tvreg_serve(f"file://{remote}", "--refresh", "0.3",
                         env={"TVREG_CACHE": str(tmp_path / "cache")}) as s:
            assert [r["name"] for r in _json(s, "/api/versions")] == ["first"]
            reg.create("second", zoo.base, zoo.finetuned["sentiment"])
            reg.push("origin")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                names = [r["name"] for r in _json(s, "/api/versions")]
                if names == ["first", "second"]:
                    break
                time.sleep(0.2)
            assert names == ["first", "second"]
            assert "second@1" in _html(s, "/")


def test_serve_an_s3_remote_by_url(web_registry, s3_endpoint):
    import s3fs

    bucket = f"web-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir(bucket)
    url = f"s3://{bucket}/team"
    with tvreg.open(web_registry) as reg:
        reg.add_remote("s3", url, {"endpoint_url": s3_endpoint})
        try:
            reg.push("s3")
        finally:
            reg.remove_remote("s3")
    with tvreg_serve(url, registry_options=(f"endpoint_url={s3_endpoint}",),
                     env={"TVREG_CACHE": str(web_registry.parent / f"cache-{bucket}")}) as s:
        assert _json(s, "/api/versions/sentiment/2")["tags"] == ["prod"]
        page = _html(s, "/versions/sentiment/2")
        assert "Most similar" in page and "&lt;img src=x" in page
        base = _json(s, "/api/versions/sentiment/2")["base_hash"]
        assert "heatmap" in _html(s, f"/bases/{base}")
        assert s.get("/", method="POST")[0] == 405


def test_large_responses_are_compressed_for_clients_that_ask(server):
    import gzip

    code, headers, body = server.get("/api/versions?all=1", {"Accept-Encoding": "gzip"})
    assert code == 200 and headers.get("content-encoding") == "gzip"
    assert "content-security-policy" in headers
    assert json.loads(gzip.decompress(body)) == _json(server, "/api/versions?all=1")
    assert "content-encoding" not in server.get("/api/versions?all=1")[1]
