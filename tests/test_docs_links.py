"""The manual's links: every relative link in README.md and docs/*.md names
a file of the checkout, and every #anchor a heading of that file (GitHub's
rules for heading anchors), so a newcomer following the README never lands
on a missing page."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = [os.path.join(ROOT, "README.md")] + sorted(
    os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".md"))

# [text](target) outside code; images too.  Targets with a scheme (https:,
# mailto:) point outside the checkout and are not checked.
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose_lines(path):
    """The lines of a markdown file outside fenced code blocks."""
    inside = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if FENCE.match(line):
                inside = not inside
            elif not inside:
                yield line


def _anchor(heading):
    """GitHub's anchor for a heading: lower case, markup and punctuation
    other than '-' and '_' dropped, spaces turned into '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path):
    seen, result = {}, set()
    for line in _prose_lines(path):
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            base = _anchor(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def _links(path):
    for line in _prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if not re.match(r"[a-z]+:", target):
                yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        file_part, _, anchor = target.partition("#")
        dest = (os.path.normpath(os.path.join(os.path.dirname(page), file_part))
                if file_part else page)
        if not os.path.exists(dest):
            broken.append(f"{target}: no file {os.path.relpath(dest, ROOT)}")
        elif anchor and dest.endswith(".md") and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == []


def test_readme_links_every_docs_file():
    # "Where to read more" is the map of the manual: a docs file it does not
    # name is one a newcomer will not find.
    with open(PAGES[0], encoding="utf-8") as f:
        readme = f.read()
    missing = [name for name in sorted(os.listdir(DOCS)) if name.endswith(".md")
               and f"(docs/{name})" not in readme]
    assert missing == []
