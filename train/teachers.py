"""Teachers: what writes the target summary (and importance) of a training pair.

- ``lead``: offline and extractive. The leading sentences of the article (news puts the
  essentials first) up to a word budget, and an importance from simple signals (casualty and
  crisis words, institutions, large numbers, soft-news words). Deterministic; for CPU and
  offline runs.
- ``openai``: any OpenAI-compatible chat endpoint (vLLM, a hosted API): ``POST
  {url}/chat/completions`` with the serving prompt's system message and article, asking for a
  JSON object ``{"summary": ..., "importance": 0-100}``.
- ``serve``: this project's own Serve app, ``POST {url}/v1/summarize`` with one Article (a
  bigger model deployed with the gpu-7b profile teaching the small one).

Every teacher returns a :class:`Label` whose summary already passed
:func:`serving.prompt.parse_output` (a target the serving parser would reject is useless), or
raises :class:`TeacherError` (``retryable`` for timeouts, 429/5xx and garbage that a second
sample may fix).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from ingestion.article import Article
from serving.prompt import (
    CLOSE_FENCE,
    OPEN_FENCE,
    SYSTEM_MESSAGE,
    OutputError,
    clean_text,
    parse_output,
    split_sentences,
)

LEAD_VERSION = "lead-v1"


class TeacherError(RuntimeError):
    """A teacher failed for one article. ``retryable``: a later attempt may succeed;
    ``invalid``: the teacher answered, but with output that is no usable target (garbage)."""

    def __init__(self, message: str, *, retryable: bool, invalid: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.invalid = invalid


@dataclass(frozen=True)
class Label:
    summary: str
    importance: float  # 0-100, the Result's scale
    teacher: str
    teacher_model: str | None = None
    teacher_version: str | None = None


class Teacher(Protocol):
    name: str

    async def label(self, article: Article) -> Label: ...

    async def aclose(self) -> None: ...


def _checked(summary: str, article: Article) -> str:
    try:
        return parse_output(summary, article=article).summary
    except OutputError as exc:
        raise TeacherError(f"unusable summary: {exc}", retryable=True, invalid=True) from exc


# --- lead ----------------------------------------------------------------------------------

# Word stems that mark consequential news, with weights; soft-news stems pull the score down.
_SIGNALS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (14.0, ("kill", "dead", "death", "died", "die", "fatal", "murder", "massacre", "casualt")),
    (10.0, ("war", "attack", "bomb", "terror", "militar", "troops", "missile", "hostage")),
    (9.0, ("earthquake", "flood", "bushfire", "wildfire", "cyclone", "hurricane", "tsunami")),
    (7.0, ("crisis", "emergency", "evacuat", "disaster", "collapse", "outbreak", "epidemic")),
    (5.0, ("government", "minister", "president", "parliament", "election", "court", "police")),
    (4.0, ("billion", "million", "economy", "inflation", "unemploy", "budget", "interest rate")),
    (-8.0, ("celebrity", "recipe", "fashion", "festival", "cat ", "pet ", "bakery", "gossip")),
)
_BIG_NUMBER = re.compile(r"\b\d{1,3}(?:,\d{3})+\b|\b\d{3,}\b")


def lead_importance(article: Article) -> float:
    """0-100 from keyword signals in the title and the first ~150 words (documented, crude)."""
    head = " ".join((article.title + " " + article.text).split()[:150]).casefold()
    score = 35.0
    for weight, stems in _SIGNALS:
        hits = sum(1 for stem in stems if stem in head)
        score += weight * min(hits, 2)
    score += 3.0 * min(len(_BIG_NUMBER.findall(head)), 3)
    return max(0.0, min(100.0, score))


class LeadTeacher:
    """The leading sentences of the article, at most ``max_sentences`` and ``max_words``."""

    name = "lead"

    def __init__(self, max_sentences: int = 2, max_words: int = 45, min_words: int = 8) -> None:
        self.max_sentences = max_sentences
        self.max_words = max_words
        self.min_words = min_words

    def lead(self, article: Article) -> str:
        sentences = split_sentences(clean_text(article.text))
        chosen: list[str] = []
        words = 0
        for sentence in sentences:
            n = len(sentence.split())
            if chosen and (words + n > self.max_words or len(chosen) >= self.max_sentences):
                break
            chosen.append(sentence)
            words += n
            if words >= self.min_words and words + 8 > self.max_words:
                break
        text = " ".join(chosen)
        if not chosen:
            raise TeacherError("no sentence in the article", retryable=False, invalid=True)
        if len(text.split()) > self.max_words * 2:
            # one very long first sentence: cut at a clause boundary within the budget
            head = " ".join(text.split()[: self.max_words])
            cut = max(head.rfind(", "), head.rfind("; "))
            text = (head[:cut] if cut > len(head) // 2 else head).rstrip(",;: ") + "."
        return text

    async def label(self, article: Article) -> Label:
        summary = self.lead(article)
        try:
            checked = parse_output(summary, article=article).summary
        except OutputError as exc:
            raise TeacherError(f"unusable lead: {exc}", retryable=False, invalid=True) from exc
        return Label(checked, lead_importance(article), self.name, None, LEAD_VERSION)

    async def aclose(self) -> None:
        return None


# --- HTTP teachers -------------------------------------------------------------------------

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _raise_for_status(response: httpx.Response, what: str) -> None:
    if response.status_code >= 400:
        body = response.text[:200].replace("\n", " ")
        raise TeacherError(
            f"{what} answered HTTP {response.status_code}: {body}",
            retryable=response.status_code in _RETRYABLE_STATUS,
        )


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_teacher_json(content: str) -> dict[str, Any]:
    """The JSON object in a chat reply (code fences and chatter around it tolerated)."""
    match = _JSON_OBJECT.search(content or "")
    if not match:
        raise TeacherError(
            f"no JSON object in reply: {content[:120]!r}", retryable=True, invalid=True
        )
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise TeacherError(f"invalid JSON in reply: {exc}", retryable=True, invalid=True) from exc
    if not isinstance(data, dict):
        raise TeacherError("reply JSON is not an object", retryable=True, invalid=True)
    return data


def _importance(value: Any) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError) as exc:
        raise TeacherError(
            f"importance is not a number: {value!r}", retryable=True, invalid=True
        ) from exc
    if not 0 <= score <= 100:
        raise TeacherError(f"importance {score} outside 0-100", retryable=True, invalid=True)
    return score


TEACHER_INSTRUCTION = (
    "Summarize the news article below in one to three short sentences, using only facts it "
    "states, and rate its importance for the general public from 0 (trivial) to 100 (historic "
    "event with wide human consequences). Answer with a JSON object only: "
    '{"summary": "...", "importance": <number>}.'
)


def teacher_messages(article: Article, max_chars: int = 12_000) -> list[dict[str, str]]:
    title = clean_text(article.title) or "(untitled)"
    header = f"Title: {title}"
    if article.source:
        header += f"\nSource: {clean_text(article.source)}"
    if article.published:
        header += f"\nDate: {article.published.date().isoformat()}"
    text = clean_text(article.text[: max_chars * 2])[:max_chars]
    user = f"{TEACHER_INSTRUCTION}\n\n{OPEN_FENCE}\n{header}\n\n{text}\n{CLOSE_FENCE}"
    return [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": user}]


class OpenAITeacher:
    """An OpenAI-compatible ``/chat/completions`` endpoint (``url`` is the API base, e.g.
    ``http://host:8000/v1``)."""

    name = "openai"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        temperature: float = 0.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.temperature = temperature
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def label(self, article: Article) -> Label:
        body = {
            "model": self.model,
            "messages": teacher_messages(article),
            "temperature": self.temperature,
            "max_tokens": 256,
            "response_format": {"type": "json_object"},
        }
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TimeoutException as exc:
            raise TeacherError(f"teacher timed out: {exc!r}", retryable=True) from exc
        except httpx.TransportError as exc:
            raise TeacherError(f"teacher unreachable: {exc!r}", retryable=True) from exc
        _raise_for_status(response, "teacher")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TeacherError(
                f"not a chat completion: {response.text[:120]!r}", retryable=True, invalid=True
            ) from exc
        data = parse_teacher_json(content)
        summary = data.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise TeacherError("reply has no summary", retryable=True, invalid=True)
        return Label(
            _checked(summary, article),
            _importance(data.get("importance")),
            self.name,
            self.model,
            None,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


class ServeTeacher:
    """This project's Serve app: ``POST {url}/v1/summarize`` with one Article, a Result back.

    A 422 (the engine's per-article error: empty or unusable text) is final; 503/504 (no
    Summarizer replica, or too slow) and garbage are retried.
    """

    name = "serve"

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/") + "/v1/summarize"
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def label(self, article: Article) -> Label:
        payload = article.model_dump(mode="json", exclude={"content_hash"}, exclude_none=True)
        try:
            response = await self._client.post(self.url, json=payload)
        except httpx.TimeoutException as exc:
            raise TeacherError(f"serve endpoint timed out: {exc!r}", retryable=True) from exc
        except httpx.TransportError as exc:
            raise TeacherError(f"serve endpoint unreachable: {exc!r}", retryable=True) from exc
        _raise_for_status(response, "serve endpoint")
        try:
            item = response.json()
        except ValueError as exc:
            raise TeacherError("serve endpoint sent no JSON", retryable=True, invalid=True) from exc
        if not isinstance(item, dict) or not isinstance(item.get("summary"), str):
            raise TeacherError(
                f"serve endpoint sent no Result: {response.text[:120]!r}",
                retryable=True,
                invalid=True,
            )
        return Label(
            _checked(item["summary"], article),
            _importance(item.get("importance")),
            self.name,
            item.get("model_id"),
            item.get("adapter_id"),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def make_teacher(
    name: str,
    *,
    url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> Teacher:
    """A teacher by name (``lead``, ``openai``, ``serve``); HTTP teachers need ``url``."""
    if name == "lead":
        return LeadTeacher()
    if name == "openai":
        if not url or not model:
            raise ValueError("the openai teacher needs --teacher-url and --teacher-model")
        return OpenAITeacher(url, model, api_key=api_key, timeout_s=timeout_s)
    if name == "serve":
        if not url:
            raise ValueError("the serve teacher needs --teacher-url (the Serve app's base URL)")
        return ServeTeacher(url, api_key=api_key, timeout_s=timeout_s)
    raise ValueError(f"unknown teacher {name!r}: lead, openai or serve")
