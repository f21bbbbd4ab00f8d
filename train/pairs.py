"""Training pairs on disk: JSONL files written whole-line-at-a-time, and the split by story.

A pair is one JSON object per line::

    {"article_id": 12, "story": "3f1c...", "split": "train",
     "article": {...Article fields...},
     "target": {"summary": "...", "importance": 63.0},
     "teacher": {"name": "lead", "model": null, "version": "lead-v1"},
     "prompt_version": "summarize-v2", "created_at": "2025-..."}

``article`` carries what the prompt needs, so training reads no database. Files are only ever
appended to with one ``write`` of a whole line followed by ``fsync``; a line cut by a crash
(no trailing newline) is removed on the next open, so a reader never sees half a pair.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.article import Article

SPLITS = ("train", "val")
_WORDS = re.compile(r"[a-z0-9]+")


def _key(text: str, words: int) -> str | None:
    tokens = _WORDS.findall(text.casefold())[:words]
    if len(tokens) < 4:
        return None
    return " ".join(tokens)


def story_keys(articles: Iterable[Article]) -> dict[int, str]:
    """A story key per article id: near-duplicates share one.

    Articles are joined into one story when one is a ``duplicate_of`` the other, or when their
    normalized titles or their first 25 words match (the same wire story through two feeds,
    lightly edited). The key is a hash of the group's smallest member key, so it does not
    depend on the order the articles come in.
    """
    items = [a for a in articles if a.id is not None]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for article in items:
        node = f"id:{article.id}"
        find(node)
        if article.duplicate_of is not None:
            union(node, f"id:{article.duplicate_of}")
        title = _key(article.title, 30)
        if title:
            union(node, f"title:{title}")
        lead = _key(article.text, 25)
        if lead:
            union(node, f"lead:{lead}")
    # the smallest content key in a group names it (ids only when nothing else is known)
    names: dict[str, str] = {}
    for node in list(parent):
        root = find(node)
        current = names.get(root)
        rank = (node.startswith("id:"), node)
        if current is None or rank < (current.startswith("id:"), current):
            names[root] = node
    return {
        a.id: hashlib.sha256(names[find(f"id:{a.id}")].encode()).hexdigest()[:16]
        for a in items
        if a.id is not None
    }


def split_of(story: str, val_fraction: float, seed: str = "newsdesk") -> str:
    """``train`` or ``val`` from a hash of the story key: stable across runs and resumes."""
    digest = hashlib.sha256(f"{seed}:{story}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def article_record(article: Article) -> dict[str, Any]:
    return article.model_dump(mode="json", exclude={"content_hash"}, exclude_none=True)


def _drop_partial_tail(path: Path) -> bool:
    """Cut a last line without its newline (a write interrupted by a crash). True if cut."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return False
        # find the last newline and truncate after it
        pos = size
        chunk = 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            block = fh.read(pos - start)
            idx = block.rfind(b"\n")
            if idx >= 0:
                fh.truncate(start + idx + 1)
                break
            pos = start
        else:
            fh.truncate(0)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line_no, record, error)`` per non-empty line: invalid lines come with an error."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, None, f"invalid JSON: {exc.msg}"
                continue
            if not isinstance(record, dict):
                yield line_no, None, "not a JSON object"
                continue
            yield line_no, record, None


class PairWriter:
    """Appends pairs to ``<dir>/train.jsonl`` and ``<dir>/val.jsonl`` durably, one line each."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {split: self.out_dir / f"{split}.jsonl" for split in SPLITS}
        self.partial_lines_dropped = sum(_drop_partial_tail(p) for p in self.paths.values())
        self._fds = {
            split: os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for split, path in self.paths.items()
        }
        self._lock = asyncio.Lock()

    def done_article_ids(self) -> set[int]:
        done: set[int] = set()
        for path in self.paths.values():
            for _, record, _error in iter_jsonl(path):
                if record and isinstance(record.get("article_id"), int):
                    done.add(record["article_id"])
        return done

    def write_sync(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        fd = self._fds[record["split"]]
        # one write of the whole line (O_APPEND), then fsync: a crash leaves either the whole
        # line or a tail without newline that the next open removes
        written = os.write(fd, line)
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)

    async def write(self, record: dict[str, Any]) -> None:
        async with self._lock:
            await asyncio.to_thread(self.write_sync, record)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
