"""Pairs JSONL -> token ids with the serving prompt, labels masked on the prompt.

Each pair becomes ``input_ids = prompt_ids + completion_ids`` and ``labels = [-100] * len(prompt)
+ completion_ids``: the loss is on the summary (and its end-of-turn token) only. The prompt comes
from :func:`serving.model.training_example.format_training_example`, built with the same function
as the engine's prompt. Bad lines are skipped and counted, never fatal.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from core.article import Article
from serving.model.output_parser import OutputError
from serving.model.prompt import PROMPT_VERSION, InputError
from serving.model.training_example import format_training_example
from train.pairs import iter_jsonl

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    article_id: int | None
    input_ids: list[int]
    labels: list[int]
    article: Article
    target: str

    @property
    def prompt_len(self) -> int:
        return sum(1 for label in self.labels if label == IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def pair_to_example(
    record: dict[str, Any], tokenizer: Any, max_prompt_tokens: int, max_target_tokens: int
) -> Example:
    """One pair as an :class:`Example`; ``ValueError`` with a short reason when unusable."""
    target = record.get("target")
    summary = target.get("summary") if isinstance(target, dict) else target
    if not isinstance(summary, str) or not summary.strip():
        raise ValueError("empty target")
    raw_article = record.get("article")
    if not isinstance(raw_article, dict):
        raise ValueError("no article")
    try:
        article = Article.model_validate(raw_article)
    except ValidationError as exc:
        raise ValueError("invalid article") from exc
    try:
        prompt_ids, completion_ids = format_training_example(
            tokenizer, article, summary, max_prompt_tokens=max_prompt_tokens
        )
    except InputError as exc:
        raise ValueError(f"unusable article ({exc.code})") from exc
    except OutputError as exc:
        raise ValueError("target does not parse") from exc
    if len(completion_ids) > max_target_tokens:
        raise ValueError("over-long target")
    return Example(
        article_id=record.get("article_id"),
        input_ids=[*prompt_ids, *completion_ids],
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(completion_ids),
        article=article,
        target=summary,
    )


def load_examples(
    path: Path,
    tokenizer: Any,
    *,
    max_prompt_tokens: int,
    max_target_tokens: int,
    limit: int | None = None,
) -> tuple[list[Example], Counter[str]]:
    """Examples from a pairs file and the counts of what was read and skipped (by reason)."""
    counts: Counter[str] = Counter()
    examples: list[Example] = []
    for _line_no, record, error in iter_jsonl(Path(path)):
        counts["lines"] += 1
        if error:
            counts["skipped: invalid JSON line"] += 1
            continue
        assert record is not None
        try:
            example = pair_to_example(record, tokenizer, max_prompt_tokens, max_target_tokens)
        except ValueError as exc:
            counts[f"skipped: {exc}"] += 1
            continue
        if record.get("prompt_version") not in (None, PROMPT_VERSION):
            counts["note: target made under another prompt version"] += 1
        examples.append(example)
        counts["used"] += 1
        if limit is not None and len(examples) >= limit:
            break
    return examples, counts


def shard_batches(
    examples: Sequence[Example],
    *,
    rank: int,
    world_size: int,
    micro_batch_size: int,
    epoch: int,
    seed: int,
    shuffle: bool = True,
) -> list[list[Example]]:
    """This rank's micro-batches for one epoch; every rank gets the same number of them.

    The order is a seeded shuffle per epoch (the same on every rank and after a resume);
    within a window of batches, examples are grouped by length so a micro-batch pads little.
    The remainder that cannot fill a batch on every rank is dropped for this epoch (a
    different remainder next epoch, since the shuffle differs).
    """
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_step = world_size * micro_batch_size
    steps = len(order) // per_step
    order = order[: steps * per_step]
    if micro_batch_size > 1:
        window = per_step * 16
        grouped: list[int] = []
        for start in range(0, len(order), window):
            grouped.extend(sorted(order[start : start + window], key=lambda i: len(examples[i])))
        order = grouped
    batches: list[list[Example]] = []
    for step in range(steps):
        chunk = order[step * per_step : (step + 1) * per_step]
        mine = chunk[rank * micro_batch_size : (rank + 1) * micro_batch_size]
        batches.append([examples[i] for i in mine])
    return batches


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding has attention 0 and label -100."""
    width = max(len(e) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def iter_eval_batches(
    examples: Sequence[Example], *, rank: int, world_size: int, micro_batch_size: int
) -> Iterator[list[Example]]:
    """This rank's share of ``examples`` (all of them, uneven shares allowed), length-sorted."""
    mine = sorted(examples[rank::world_size], key=len)
    for start in range(0, len(mine), micro_batch_size):
        yield mine[start : start + micro_batch_size]
