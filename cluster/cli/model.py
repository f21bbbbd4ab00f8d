"""``newsdesk model prepare`` and ``newsdesk summarize FILE...``: the engine from the shell.

``summarize`` reads text files (first non-empty line = title, the rest = text) or JSON files
(one Article object, a list of them, or JSON Lines), summarizes them in-process and prints one
Result or ArticleError JSON object per line on stdout, in file order, with a progress bar on
stderr. A file that cannot be read becomes an ``invalid_input`` error line; it stops nothing.

stdout is for the JSON lines only (``newsdesk summarize a.txt | jq``): while the engine loads
and runs, whatever libraries write to stdout goes to stderr (see
:func:`cluster.cli.common.stdout_for_data`). DeepSpeed's logger writes to a handler of its own
on ``sys.stdout``; its "Setting accelerator to CPU ..." warning came out there on the first
run, when accelerate imported DeepSpeed while the model was being converted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.cli.common import err_console, settings, stdout_for_data
from core.article import Article

model_app = typer.Typer(help="The summarization model: prepare (convert) it.", no_args_is_help=True)


@model_app.command("prepare")
def prepare(
    profile: Annotated[str | None, typer.Option(help="Profile name or YAML path.")] = None,
) -> None:
    """Convert the profile's model into a transformers folder (once) and print its path."""
    cfg = settings()
    with stdout_for_data() as out:  # the path only: `cd "$(newsdesk model prepare)"`
        from serving.engine.model_source import prepare_model
        from serving.model.profiles import load_profile

        path = prepare_model(load_profile(profile or cfg.model_profile), cfg)
        out.write(f"{path}\n")


def read_articles(path: Path) -> list[Article]:
    """Articles from a text or JSON(L) file; raises ValueError naming the problem."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    stripped = text.lstrip()
    if path.suffix in {".json", ".jsonl"} or stripped.startswith(("{", "[")):
        try:
            if path.suffix == ".jsonl":
                items = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                data = json.loads(text)
                items = data if isinstance(data, list) else [data]
            return [Article.model_validate(item) for item in items]
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"{path}: not a valid article JSON ({exc})") from exc
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return [Article(title=path.stem, text="")]
    title = lines[first].strip()[:1000]
    body = "\n".join(lines[first + 1 :]).strip()
    if not body:  # a one-line file is all text
        return [Article(title="", text=title)]
    return [Article(title=title, text=body, source=path.name)]


def summarize(
    files: Annotated[list[Path], typer.Argument(help="Text or JSON article files.")],
    profile: Annotated[str | None, typer.Option(help="Profile name or YAML path.")] = None,
    adapter: Annotated[Path | None, typer.Option(help="A PEFT LoRA adapter folder.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Summarize article files in-process; one Result JSON per line on stdout."""
    cfg = settings()
    entries: list[tuple[Path, Article | str]] = []
    for path in files:
        try:
            entries.extend((path, article) for article in read_articles(path))
        except (OSError, ValueError) as exc:
            entries.append((path, str(exc)))
    failures = 0
    # stdout: the JSON lines only; the engine's imports, load and runs write to stderr
    with stdout_for_data() as out:
        from serving.engine import SummarizeEngine
        from serving.model.result import ArticleError

        err_console.print(f"loading the model ({profile or cfg.model_profile})...")
        engine = SummarizeEngine.load(profile or cfg.model_profile, cfg, adapter=adapter)
        batch = engine.max_batch_size
        with Progress(
            TextColumn("summarizing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=False,
        ) as progress:
            task = progress.add_task("summarize", total=len(entries))
            for start in range(0, len(entries), batch):
                chunk = entries[start : start + batch]
                articles = [a for _, a in chunk if isinstance(a, Article)]
                outcomes = iter(engine.summarize(articles, max_new_tokens=max_new_tokens))
                for _path, item in chunk:
                    if isinstance(item, Article):
                        outcome = next(outcomes)
                    else:
                        outcome = ArticleError(content_hash="", code="invalid_input", message=item)
                    failures += isinstance(outcome, ArticleError)
                    out.write(outcome.model_dump_json() + "\n")
                    progress.advance(task)
    if failures:
        err_console.print(f"{failures} of {len(entries)} articles got an error")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
    app.command("summarize")(summarize)
