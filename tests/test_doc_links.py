"""Every relative link in README.md and docs/*.md points at a file that exists and, for a
``#anchor`` into a markdown file, at one of its headings (GitHub's anchor rules)."""

from __future__ import annotations

import pathlib
import re
from collections import Counter

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)      # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    seen: Counter[str] = Counter()
    out = set()
    for heading in HEADING.findall(prose(page.read_text())):
        base = slug(heading)
        out.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return out


def links(page: pathlib.Path) -> list[str]:
    text = prose(page.read_text())
    return LINK.findall(text) + IMAGE.findall(text)


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)   # http:, https:, mailto:, …


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in filter(_relative, links(page)):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_slugs_follow_github():
    assert slug("9.3 Reading from a remote: `tvreg pull` and `tvreg.open(URL)`") == \
        "93-reading-from-a-remote-tvreg-pull-and-tvregopenurl"
    assert slug("verify --repair REMOTE") == "verify---repair-remote"
    assert slug("Codecs: the lossless default (`bgzstd`) against zstd-3 and ZipNN (issue 6)") == \
        "codecs-the-lossless-default-bgzstd-against-zstd-3-and-zipnn-issue-6"


def test_the_checker_finds_links():
    found = [t for page in PAGES for t in links(page) if _relative(t)]
    assert len(found) > 100 and any("#" in t for t in found)
