"""The output parser: what the model wrote, read back into a checked 1-3 sentence summary.

:func:`parse_output` repairs what can be repaired (labels, bullets, repeated sentences, a
sentence cut by the token limit) and raises :class:`OutputError` otherwise (empty, too short, an
echo of the prompt). It is the other half of :mod:`serving.model.prompt`: its echo checks are built
from that module's own instructions, so a prompt change is seen here at once; training checks
its targets with it too (:mod:`serving.model.training_example`), so the model never learns output
that serving would reject. :func:`split_sentences` is the one sentence splitter,
shared with the verifier and the extractive fallback so that all three count the same sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.article import Article
from serving.model.prompt import (
    CHAT_CONTROL,
    CLOSE_FENCE,
    CLOSING,
    INSTRUCTION,
    OPEN_FENCE,
    RATING_QUESTION,
    SYSTEM_MESSAGE,
)

MAX_SENTENCES = 3
MIN_SUMMARY_WORDS = 3


class OutputError(ValueError):
    """Generated text that cannot be repaired into a summary."""


@dataclass(frozen=True)
class ParsedOutput:
    summary: str
    repairs: tuple[str, ...] = ()


_LABEL = re.compile(
    r"^\s*(?:\*\*)?(?:summary|here(?:'s| is) (?:a |the )?(?:short |brief )?summary"
    r"(?: of the (?:news )?article)?|tl;?dr|reply with the summary only)(?:\*\*)?\s*[:\-–]\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*•>]|\d+[.)])\s+", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)]*\s+(?=[\"'“‘(]?[A-Z0-9À-Ý])")
_WORD = re.compile(r"[\w'’-]+", re.UNICODE)


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


# A full stop after these is not a sentence's end ("Mr. Smith", "U.S. officials", "J. Smith").
_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|Gen|Sen|Rep|Gov|Lt|Col|Capt|Sgt|Rev|Hon|No|Nos|"
    r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Inc|Corp|Co|Ltd|vs|etc|approx)"
    r"|\b[A-Z](?:\.[A-Z])*)\.$"
)


def split_sentences(text: str) -> list[str]:
    """Sentences of plain text: split after . ! ? … before a capital or digit, except after
    an abbreviation or an initial."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip()
        if not piece:
            continue
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _ngrams(words: list[str], n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


_INSTRUCTION_NGRAMS = set().union(
    *(_ngrams(_words(t)) for t in (SYSTEM_MESSAGE, INSTRUCTION, CLOSING, RATING_QUESTION))
)


_FENCE = re.compile(r"</?article>", re.IGNORECASE)


def _copies_instructions(sentence: str) -> bool:
    """A sentence with four words in a row from the instructions, or with an article fence
    (the model paraphrasing "The article is given between <article> and </article>"), is
    the prompt, not news."""
    return bool(_FENCE.search(sentence)) or bool(_ngrams(_words(sentence)) & _INSTRUCTION_NGRAMS)


def _is_echo(summary: str, article: Article | None) -> str | None:
    """Why ``summary`` merely repeats the prompt (instructions, fences, header), or None."""
    folded = " ".join(_words(summary))
    for fixed in (SYSTEM_MESSAGE, INSTRUCTION, CLOSING, RATING_QUESTION):
        fixed_words = " ".join(_words(fixed))
        if folded and (folded in fixed_words or fixed_words[:60] in folded):
            return "repeats the instructions"
    # (a sentence with an article fence never gets here: _copies_instructions dropped it)
    if re.search(r"^\s*(title|source|date)\s*:", summary, re.I | re.M):
        return "repeats the prompt's article header"
    if article is not None and article.title:
        if folded == " ".join(_words(article.title)):
            return "repeats the title only"
    return None


def parse_output(text: str, article: Article | None = None) -> ParsedOutput:
    """A checked 1-3 sentence summary from generated text, or :class:`OutputError`.

    Repairs: chat tokens and fences removed, a leading "Summary:" label or bullet dropped,
    whitespace joined, a sentence repeated verbatim kept once, a sentence that copies four
    words in a row from the instructions dropped, more than three sentences cut
    to three, a trailing sentence cut by the token limit dropped (or, when it is the only
    one, closed with an ellipsis). Fails: no text, fewer than 3 words, or an echo of the
    prompt.
    """
    repairs: list[str] = []
    raw = text
    # The fences stay until sentences are judged: a sentence that writes one echoes the
    # prompt even when its words are paraphrased.
    for token in CHAT_CONTROL:
        if token not in (OPEN_FENCE, CLOSE_FENCE):
            text = text.replace(token, " ")
    text = _BULLET.sub("", text)
    stripped = _LABEL.sub("", text.strip(), count=1)
    if stripped != text.strip():
        repairs.append("label")
    text = " ".join(stripped.split()).strip(" \"'")
    if not text:
        raise OutputError("empty output")

    sentences = split_sentences(text)
    unique: list[str] = []
    seen: set[str] = set()
    for sentence in sentences:
        key = " ".join(_words(sentence))
        if key and key not in seen:
            seen.add(key)
            unique.append(sentence)
    if len(unique) < len(sentences):
        repairs.append("repeated sentences")
    sentences = [x for x in unique if not _copies_instructions(x)]
    if unique and not sentences:
        raise OutputError(f"summary repeats the instructions: {text[:80]!r}")
    if len(sentences) < len(unique):
        repairs.append("instruction sentence dropped")
    if sentences and sentences[-1][-1] not in ".!?…\"'”’)":
        if len(sentences) > 1:
            sentences = sentences[:-1]
            repairs.append("cut sentence dropped")
        else:
            sentences = [sentences[0].rstrip(",;: -") + "…"]
            repairs.append("cut sentence closed")
    if len(sentences) > MAX_SENTENCES:
        sentences = sentences[:MAX_SENTENCES]
        repairs.append("more than three sentences")
    summary = " ".join(sentences)
    if len(_words(summary)) < MIN_SUMMARY_WORDS:
        raise OutputError(f"summary too short: {raw.strip()[:80]!r}")
    echo = _is_echo(summary, article)
    if echo:
        raise OutputError(f"summary {echo}: {summary[:80]!r}")
    return ParsedOutput(summary=summary, repairs=tuple(repairs))
