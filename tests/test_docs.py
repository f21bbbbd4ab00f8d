"""The README stays a front door and the docs stay linked.

The README holds only what a newcomer needs first (the commands, the architecture at a glance,
headline figures); everything else lives in docs/. These checks keep it that way: the README
cannot grow back into a manual, its first code block keeps the two commands the Makefile
promises, and no relative link in the README or docs/ points at a file that is not there (pages
and modules move; a dead link is found here, not by a reader).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 260

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and [text](target "title"); images too.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _relative_targets(text: str) -> list[str]:
    """Link targets outside code (a link inside a code block or span is not a link)."""
    prose = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return [
        target
        for target in _LINK.findall(prose)
        if not _EXTERNAL.match(target) and not target.startswith("#")
    ]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move details into docs/"
    )


def test_readme_first_code_block_has_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first = _FENCE.search(text)
    assert first is not None, "README.md has no code block"
    block = first.group(0)
    for command in ("make run", "make test"):
        assert re.search(rf"^\s*{command}\b", block, re.M), (
            f"the README's first code block lacks `{command}`:\n{block}"
        )


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(page: Path) -> None:
    missing = []
    for target in _relative_targets(page.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_link_finder_sees_links_and_skips_code() -> None:
    text = (
        "see [a](docs/a.md#x), [b](https://example.org), [c](#here), ![i](img.png)\n"
        "`[not](inline.md)`\n```\n[not](fenced.md)\n```\n"
    )
    assert _relative_targets(text) == ["docs/a.md#x", "img.png"]
