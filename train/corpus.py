"""Real news text for training, the offline stack's sample feeds, tests and benchmarks,
fetched at run time (never committed).

The Lee background corpus (300 ABC news articles, one per line) ships inside gensim's wheel as
``gensim/test/test_data/lee_background.cor``. ``ensure_lee_corpus`` downloads that wheel once
with pip (``pip download --no-deps gensim==4.4.0``: no install), extracts the one file into
``STATE_DIR/sample-data/`` and returns its path; later calls just return the path.
:func:`outside_news` does the same for the English test articles in newspaper4k's source
package (real news from US, Korean and tech outlets, with the publishers' descriptions).

Why in train/: the training pipeline (``train/sample_feeds.py``) is the lowest layer that reads
the corpus; the offline stack's sample feeds (``cluster/sample_data.py``) sit above it, and
tests and benchmarks above everything.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

GENSIM_VERSION = "4.4.0"
MEMBER = "gensim/test/test_data/lee_background.cor"
FILENAME = "lee_background.cor"


def _fetch_once(state_dir: Path, filename: str, extract: Any, *pip_args: str) -> Path:
    """``STATE_DIR/sample-data/<filename>``: on first use, ``pip download`` the package named
    by ``pip_args`` into a temporary folder and write ``extract(folder)``'s bytes there (under a
    lock, atomically); later calls just return the path."""
    folder = Path(state_dir).expanduser() / "sample-data"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    if target.is_file():
        return target
    with open(folder / f".{filename}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-q",
                    *pip_args,
                    "-d",
                    tmp,
                ],
                check=True,
                timeout=600,
            )
            data = extract(Path(tmp))
            partial = folder / f".{filename}.partial"
            partial.write_bytes(data)
            os.replace(partial, target)
    return target


def ensure_lee_corpus(state_dir: Path) -> Path:
    """Path of the Lee corpus under ``state_dir/sample-data``, fetching it on first use."""

    def extract(folder: Path) -> bytes:
        wheel = next(folder.glob("gensim-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(MEMBER)

    return _fetch_once(
        state_dir, FILENAME, extract, "--only-binary=:all:", f"gensim=={GENSIM_VERSION}"
    )


# Real news from outside the project: the English test articles of newspaper4k's source
# package (CNN, TIME, WIRED, Yonhap, FOX13, cleveland.com, ...), each with the text the
# package expects its extractor to find and the publisher's own description (its
# <meta name="description">), a human-written reference. Only 0.9.6's sdist carries them.
NEWSPAPER4K_VERSION = "0.9.6"
OUTSIDE_NEWS_FILE = f"newspaper4k-{NEWSPAPER4K_VERSION}-en.jsonl"


def outside_news(state_dir: Path) -> list[dict[str, Any]]:
    """The English articles of newspaper4k's test data as dicts: ``id``, ``title``, ``text``,
    ``source``, ``url`` and ``reference`` (the publisher's description, or None)."""

    def extract(folder: Path) -> bytes:
        root = f"newspaper4k-{NEWSPAPER4K_VERSION}/tests/data/"
        lines = []
        with tarfile.open(next(folder.glob("newspaper4k-*.tar.gz"))) as archive:
            names = set(archive.getnames())
            for name in sorted(names):
                if not (name.startswith(root + "metadata/") and name.endswith(".json")):
                    continue
                stem = name[len(root + "metadata/") : -len(".json")]
                text_name = f"{root}txt/{stem}.txt"
                member = archive.extractfile(name)
                meta = json.load(member) if member else {}
                # (video_article_01 has no language: a copy of cleveland.com1)
                if meta.get("language") != "en" or text_name not in names:
                    continue
                text_file = archive.extractfile(text_name)
                text = text_file.read().decode("utf-8").strip() if text_file else ""
                reference = " ".join((meta.get("meta_description") or "").split())
                record = {
                    "id": stem,
                    "title": meta.get("title") or "",
                    "text": text,
                    "source": meta.get("meta_site_name") or None,
                    "url": meta.get("url"),
                    "reference": reference or None,
                }
                lines.append(json.dumps(record, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode("utf-8")

    path = _fetch_once(
        state_dir,
        OUTSIDE_NEWS_FILE,
        extract,
        "--no-binary=:all:",
        f"newspaper4k=={NEWSPAPER4K_VERSION}",
    )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def lee_articles(state_dir: Path, limit: int | None = None) -> list[str]:
    """The corpus' articles (non-empty lines), at most ``limit``."""
    lines = ensure_lee_corpus(state_dir).read_text(encoding="utf-8", errors="replace").splitlines()
    articles = [line.strip() for line in lines if line.strip()]
    return articles[:limit] if limit is not None else articles


def headline(text: str, words: int = 8, *, mark_cut: bool = False) -> str:
    """A headline-like title for a corpus article (which has none): the first ``words`` words
    of its first sentence. (Not the whole sentence: a summary copying the lead would then
    equal the title.) ``mark_cut`` trims a trailing ",;:" and adds "..." when words were cut,
    as the training feeds' titles have it."""
    tokens = text.split(". ")[0].split()
    title = " ".join(tokens[:words])
    if not mark_cut:
        return title
    return title.rstrip(",;:") + ("..." if len(tokens) > words else "")
