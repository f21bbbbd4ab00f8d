"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, TextIO, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from cluster.settings import Settings

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; the Exit to raise with ``code``."""
    err_console.print(f"[red]error:[/red] {escape(message)}")  # a URL's [..] is not markup
    return typer.Exit(code)


def settings() -> Settings:
    """The CLI is the one place that reads the process environment into Settings."""
    return Settings()


def run(coro: Coroutine[Any, Any, T]) -> T:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(coro)


def _fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: not a real file
        return None


def _flush_c_stdio() -> None:
    """Flush C stdio buffers (``printf`` output of native libraries) to their descriptors."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def logging_handlers_to_stderr(*streams: object) -> None:
    """Point every logging StreamHandler that writes to one of ``streams`` (default: stdout)
    at stderr. DeepSpeed's logger, for one, has its own handler bound to ``sys.stdout``
    (``propagate=False``), so its warnings ("Setting accelerator to CPU ...") land on stdout."""
    streams = streams or (sys.stdout, sys.__stdout__)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and any(
                handler.stream is s for s in streams if s is not None
            ):
                handler.setStream(sys.stderr)


@contextlib.contextmanager
def stdout_for_data() -> Iterator[TextIO]:
    """Keep stdout for a command's data (``newsdesk summarize ... | jq``).

    Yields a line-buffered UTF-8 stream on the real stdout for the data. Until the block
    ends, everything else written to stdout goes to stderr: ``print`` and other writes to
    ``sys.stdout``, logging handlers bound to stdout (DeepSpeed's), and, when stdout is a
    file descriptor, native code writing to fd 1 (its C stdio buffers are flushed first).
    """
    real = sys.stdout
    real.flush()
    logging_handlers_to_stderr(real, sys.__stdout__)
    out_fd, err_fd = _fileno(real), _fileno(sys.stderr)
    saved_fd: int | None = None
    if out_fd is not None and err_fd is not None and out_fd != err_fd:
        sys.stderr.flush()
        _flush_c_stdio()
        saved_fd = os.dup(out_fd)
        os.dup2(err_fd, out_fd)
        data: TextIO = open(saved_fd, "w", encoding="utf-8", buffering=1, closefd=False)
    else:
        data = real
    sys.stdout = sys.stderr
    try:
        yield data
    finally:
        data.flush()
        sys.stderr.flush()
        sys.stdout = real
        if saved_fd is not None and out_fd is not None:
            real.flush()  # writes through an old reference to it: still bound for stderr
            _flush_c_stdio()
            os.dup2(saved_fd, out_fd)
            data.close()
            os.close(saved_fd)
