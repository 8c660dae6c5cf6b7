"""Screenshots of `tvreg serve` for the docs: a demo registry of real toy fine-tunes, served, and
shown in headless Chromium.

1. fine-tunes a small real model on five tasks (CPU, about a second) and stores the task vectors
   with metadata, a second version of one, a lossy copy, tags and a base name;
2. composes a chain (multitask from three vectors, multitask-length from it and a fourth);
3. starts `tvreg serve` on a free loopback port;
4. saves five 1280-pixel-wide PNGs under --out: web-overview.png (the overview),
   web-version.png (multitask@1 with its lineage), web-heatmap.png (the base's heatmap with a
   cell's tooltip), web-pair.png (a pair per tensor), web-sql.png (the SQL console with a result).

Needs the web extra and Playwright's Python package (`pip install 'tvreg[web]' playwright`) and a
Chromium: Debian's (`apt-get install chromium`, the default --chromium /usr/bin/chromium) or
Playwright's own (`playwright install chromium`, then --chromium "").

    python examples/web_screenshots.py [--out docs/img] [--workdir DIR] [--chromium PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import tvreg
from tvreg.testing import make_toy_zoo
from tvreg.testing.web import CHROMIUM_ARGS, tvreg_serve

WIDTH = 1280
SQL = ("SELECT name || '@' || version AS a, other_name || '@' || other_version AS b,\n"
       "       round(cosine, 4) AS cosine, round(sign_conflict_rate, 3) AS sign_conflicts,\n"
       "       round(alignment, 3) AS alignment\n"
       "FROM similar_versions WHERE name < other_name ORDER BY cosine DESC LIMIT 12")


def build(root: Path) -> Path:
    """The demo registry under ``root``; returns its path."""
    zoo = make_toy_zoo(root / "zoo", tasks=("sentiment", "topic", "toxicity", "length",
                                            "parity"), steps=30)
    # a longer, gentler fine-tune of the same base: a second version of sentiment
    longer = make_toy_zoo(root / "zoo-longer", tasks=("sentiment",), steps=60, lr=5e-3)
    path = root / "registry"
    with tvreg.open(path) as reg:
        for task in ("sentiment", "topic", "toxicity", "length"):
            reg.create(task, zoo.base, zoo.finetuned[task], **zoo.meta[task],
                       meta={"seed": 0, "owner": "nlp-team"})
        reg.create("sentiment", zoo.base, longer.finetuned["sentiment"],
                   **longer.meta["sentiment"], meta={"seed": 0, "owner": "nlp-team"})
        reg.create("team/parity", zoo.base, zoo.finetuned["parity"], **zoo.meta["parity"])
        reg.create("sentiment-int8", zoo.base, zoo.finetuned["sentiment"], codec="int8",
                   **zoo.meta["sentiment"])
        reg.tag("sentiment@2", "prod")
        reg.tag("topic@1", "prod")
        reg.save_composition("multitask", reg.resolve("0.5*sentiment + topic - toxicity"),
                             task="multitask", meta={"note": "λ tuned on toy dev sets"})
        reg.tag("multitask@1", "candidate")
        reg.save_composition("multitask-length", reg.resolve("multitask + 0.5*length"),
                             task="multitask+length")
        reg.name_base(reg.show("topic@1")["base_hash"], "toy-transformer")
    return path


def shoot(url: str, out: Path, chromium: str | None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium or None, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 860})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))

        def save(name: str, *, full_page: bool = True) -> None:
            target = out / name
            page.screenshot(path=str(target), full_page=full_page)
            saved.append(target)

        def open_(path: str) -> None:
            response = page.goto(url + path)
            if response is None or response.status != 200:
                raise SystemExit(f"{path}: HTTP {response and response.status}")

        open_("/")
        save("web-overview.png")

        page.set_viewport_size({"width": WIDTH, "height": 1000})
        open_("/versions/multitask/1")
        save("web-version.png", full_page=False)

        page.set_viewport_size({"width": WIDTH, "height": 760})
        open_("/bases/toy-transformer")
        cell = page.locator('#heatmap rect.cell[data-a="multitask@1"][data-b="toxicity@1"]')
        cell.scroll_into_view_if_needed()
        cell.hover()
        page.locator("#tip").wait_for(state="visible")
        save("web-heatmap.png", full_page=False)

        page.set_viewport_size({"width": WIDTH, "height": 860})
        open_(f"/pair?a={quote('multitask@1')}&b={quote('toxicity@1')}")
        save("web-pair.png")

        open_("/sql")
        page.fill("#sql-form textarea", SQL)
        with page.expect_navigation():
            page.click("#sql-form button[type=submit]")
        if page.locator("#sql-error").count():
            raise SystemExit("the SQL failed: " + page.locator("#sql-error").inner_text())
        save("web-sql.png")
        browser.close()
    if problems:
        raise SystemExit("the pages logged errors:\n" + "\n".join(problems))
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"),
                        help="folder for the PNGs (default: docs/img)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to build the demo registry (default: a temporary folder)")
    parser.add_argument("--chromium", default="/usr/bin/chromium",
                        help="the Chromium to drive ('' for Playwright's own)")
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tvreg-web-"))
    if args.workdir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TVREG_NO_PROGRESS", "1")
    try:
        registry = build(work)
        with tvreg_serve(registry) as server:
            saved = shoot(server.base, args.out, args.chromium)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    for path in saved:
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
