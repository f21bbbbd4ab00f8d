"""The timing both anchor runners share (imported from their own folder, inside each anchor's
virtualenv: nothing of Newsdesk). One warm-up, then the best of ``repeats`` per batch size."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def time_batches(
    generate: Callable[[list[list[int]]], Any],
    first_tokens: Callable[[Any], list[int]],
    prompts: list[list[int]],
    sizes: Sequence[int],
    repeats: int,
) -> dict[str, object]:
    """``{"aps": {size: articles/s}, "tokens_first": the first prompt's tokens at batch 1}``:
    ``generate`` on the first ``size`` prompts; ``first_tokens`` reads the first row's tokens
    from what it returned."""
    generate(prompts[:1])  # warm-up: compilation, first allocations
    out: dict[str, Any] = {"aps": {}}
    for size in sizes:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            result = generate(prompts[:size])
            best = min(best, time.perf_counter() - started)
        out["aps"][str(size)] = size / best
        if size == 1:
            out["tokens_first"] = list(first_tokens(result))
    return out
