"""One training pair in token ids: the exact prompt the engine serves, and a target that the
output parser reads back unchanged.

It sits above both :mod:`serving.model.prompt` and :mod:`serving.model.output_parser` (the parser
imports the prompt's instructions for its echo checks), so training cannot drift from serving.
"""

from __future__ import annotations

from typing import Any

from core.article import Article
from serving.model.output_parser import parse_output
from serving.model.prompt import build_prompt, completion_ids


def format_training_example(
    tokenizer: Any,
    article: Article,
    target_summary: str,
    max_prompt_tokens: int = 512,
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, completion_ids)`` for one training pair.

    ``prompt_ids`` are exactly what the engine feeds the model for ``article``;
    ``completion_ids`` are ``target_summary``'s tokens followed by the end-of-turn token, i.e.
    what :func:`serving.model.output_parser.parse_output` reads back. The target must itself parse
    (a bad target would teach the model output that serving rejects):
    :class:`~serving.model.output_parser.OutputError` otherwise.
    """
    parsed = parse_output(target_summary, article=article)
    prompt = build_prompt(tokenizer, article, max_prompt_tokens)
    return prompt.ids, completion_ids(tokenizer, parsed.summary)
