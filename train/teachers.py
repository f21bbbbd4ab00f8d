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
:func:`serving.model.output_parser.parse_output` (a target the serving parser would reject is
useless), or raises :class:`TeacherError` (``retryable`` for timeouts, 429/5xx and garbage that a
second sample may fix). Whether the summary is faithful is :mod:`serving.model.verifier`'s call,
made by
:func:`train.generate_training_data.generate` for every teacher alike; a ``serve`` Result that
is the engine's extractive fallback is marked ``extractive_fallback`` (not a model's summary).
(Over 400 lines: the teachers side by side, each small, behind the one Label contract; the
self-verified teacher's choice rule sits with them.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from core.article import Article
from serving.model.output_parser import OutputError, parse_output, split_sentences
from serving.model.prompt import CLOSE_FENCE, OPEN_FENCE, SYSTEM_MESSAGE, clean_text
from serving.model.verifier import Evidence, check

# v2: the lead is shortened to fewer sentences when the longer one fails the verifier (a
# repeated phrase quoted in the second sentence: "Pakistan wants peace, Pakistan wants ...").
LEAD_VERSION = "lead-v2"


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
    # The serving engine's extractive fallback (its model's summaries failed its verifier):
    # the article's own sentences, not a model's summary.
    extractive_fallback: bool = False


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
    """The leading sentences of the article, at most ``max_sentences`` and ``max_words``.

    The article's own sentences pass the verifier's support, name and number rules by
    construction; its repetition, meta and length rules they may fail (a quoted slogan). Then
    the lead is cut to fewer sentences until one passes; if none does, the longest is returned
    and the verifier in :func:`train.generate_training_data.generate` drops it."""

    name = "lead"

    def __init__(self, max_sentences: int = 2, max_words: int = 45, min_words: int = 8) -> None:
        self.max_sentences = max_sentences
        self.max_words = max_words
        self.min_words = min_words

    def lead(self, article: Article, max_sentences: int | None = None) -> str:
        max_sentences = max_sentences or self.max_sentences
        sentences = split_sentences(clean_text(article.text))
        chosen: list[str] = []
        words = 0
        for sentence in sentences:
            n = len(sentence.split())
            if chosen and (words + n > self.max_words or len(chosen) >= max_sentences):
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
        evidence: Evidence | None = None
        for n in range(self.max_sentences - 1, 0, -1):
            evidence = evidence or Evidence.of(article)
            if check(summary, evidence)[1].passed:
                break
            shorter = self.lead(article, n)
            if shorter == summary:
                break
            summary = shorter
        try:
            checked = parse_output(summary, article=article).summary
        except OutputError as exc:
            raise TeacherError(f"unusable lead: {exc}", retryable=False, invalid=True) from exc
        return Label(checked, lead_importance(article), self.name, None, LEAD_VERSION)

    async def aclose(self) -> None:
        return None


# --- self-verified: the serving model's own best verified sample ---------------------------

SELF_VERIFIED_VERSION = "self-verified-v1"
SUPPORT_STEP = 0.05  # supports this close count as equal: conciseness decides


def choose_candidate(candidates: list[Any]) -> Any | None:
    """The best of an article's candidates (:class:`serving.engine.Candidate`) that pass the
    verifier, or None: the highest support (in steps of ``SUPPORT_STEP``), then the fewest
    words, then the most agreement with the other candidates (mean ROUGE-L F1 against each
    other parsed candidate: what most samples say, rather than what one sample made up)."""
    passing = [c for c in candidates if c.passed]
    if not passing:
        return None
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    others = [c.summary for c in candidates if c.summary]

    def agreement(candidate: Any) -> float:
        rest = [o for o in others if o is not candidate.summary]
        if not rest:
            return 0.0
        return sum(scorer.score(o, candidate.summary)["rougeL"].fmeasure for o in rest) / len(rest)

    return max(
        passing,
        key=lambda c: (
            round(c.report.support / SUPPORT_STEP),
            -len(c.summary.split()),
            agreement(c),
            -c.seed,
        ),
    )


class SelfVerifiedTeacher:
    """The serving model's own summaries, kept only when the verifier passes them
    (rejection-sampling fine-tuning): ``k`` samples per article (temperature, top-p, a seed per
    sample from :func:`serving.engine.candidate_seed`), the best passing one by
    :func:`choose_candidate`; an article none of whose samples passes is no pair
    (``TeacherError``, counted as invalid with its reason; not retried: the same seeds draw the
    same samples).

    ``label`` is called once per article, concurrently; calls that arrive together are
    sampled together (up to ``batch_articles`` articles, ``batch_articles * k`` rows through
    the engine's micro-batches) on the engine's own thread. Importance: the lead teacher's
    keyword estimate (the 135M model's own rating is noise)."""

    name = "self-verified"

    def __init__(
        self,
        engine: Any,
        *,
        k: int = 4,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
        batch_articles: int = 8,
        wait_s: float = 0.05,
    ) -> None:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        self.engine = engine
        self.k, self.temperature, self.top_p, self.seed = k, temperature, top_p, seed
        self.batch_articles = batch_articles
        self.wait_s = wait_s
        self._pending: list[tuple[Article, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # one thread: the engine's OpenMP state stays on it (serving/deployments/summarizer.py)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler")
        self.candidates_seen = 0
        self.candidates_passed = 0

    @property
    def version(self) -> str:
        return (
            f"{SELF_VERIFIED_VERSION} k={self.k} temperature={self.temperature} "
            f"top_p={self.top_p} seed={self.seed}"
        )

    async def label(self, article: Article) -> Label:
        import asyncio

        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((article, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        outcome = await future
        if not isinstance(outcome, list):  # the engine's ArticleError: unusable input
            raise TeacherError(outcome.message, retryable=False, invalid=True)
        self.candidates_seen += len(outcome)
        self.candidates_passed += sum(c.passed for c in outcome)
        best = choose_candidate(outcome)
        if best is None:
            failures = sorted(
                {f for c in outcome for f in (c.report.failures if c.report else ["unparsable"])}
            )
            raise TeacherError(
                f"no verified candidate of {len(outcome)} ({', '.join(failures)})",
                retryable=False,
                invalid=True,
            )
        return Label(
            best.summary,
            lead_importance(article),
            self.name,
            self.engine.model_id + (f"+{self.engine.adapter_id}" if self.engine.adapter_id else ""),
            f"{self.version} sample_seed={best.seed}",
        )

    async def _flush(self) -> None:
        import asyncio

        await asyncio.sleep(self.wait_s)  # let the calls that arrive together gather
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self.batch_articles]
            del self._pending[: self.batch_articles]
            articles = [article for article, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._sample, articles)
            except Exception as exc:  # the whole batch: each caller sees it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(TeacherError(f"sampling failed: {exc!r}"))
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _sample(self, articles: list[Article]) -> list[Any]:
        return self.engine.sample(
            articles, k=self.k, temperature=self.temperature, top_p=self.top_p, seed=self.seed
        )

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)


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
            extractive_fallback=item.get("method") == "extractive",
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
    engine: Any = None,
    sampling: dict[str, Any] | None = None,
) -> Teacher:
    """A teacher by name (``lead``, ``openai``, ``serve``, ``self-verified``); HTTP teachers
    need ``url``; ``self-verified`` takes a loaded ``engine`` and its ``sampling`` options."""
    if name == "lead":
        return LeadTeacher()
    if name == "self-verified":
        if engine is None:
            raise ValueError("the self-verified teacher needs a loaded engine")
        return SelfVerifiedTeacher(engine, **(sampling or {}))
    if name == "openai":
        if not url or not model:
            raise ValueError("the openai teacher needs --teacher-url and --teacher-model")
        return OpenAITeacher(url, model, api_key=api_key, timeout_s=timeout_s)
    if name == "serve":
        if not url:
            raise ValueError("the serve teacher needs --teacher-url (the Serve app's base URL)")
        return ServeTeacher(url, api_key=api_key, timeout_s=timeout_s)
    raise ValueError(f"unknown teacher {name!r}: lead, openai, serve or self-verified")
