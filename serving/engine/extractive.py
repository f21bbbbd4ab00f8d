"""The extractive fallback: a summary made of the article's own sentences.

When the model's summaries of an article fail the verifier (first pass and retry), the engine
serves this instead, and says so (``Result.method == "extractive"``). News puts the essentials
first, so the candidates are the article's first ``window`` sentences (of four words or more);
of those, the ``max_sentences`` most central ones are kept, in the article's order, within the
token budget of a summary:

- **central**: cosine similarity of each candidate's sentence embedding (the all-MiniLM-L6-v2
  model the engine already loads for importance) to the mean of the title's and all
  candidates' embeddings, less ``LEAD_BIAS`` per position, so that among equals the earlier
  sentence wins, and less ``DANGLING_PENALTY`` for a sentence that leans on the one before it
  (it opens with a quote, "But", "He", "This", ...: out of context it reads as a non sequitur).
  Without an embedder: the lead sentences. A wire dateline ("SEOUL, Aug. 20 (Yonhap) --") is
  taken off; a question is no candidate while a statement is (a summary states facts).
- **budget**: sentences are added while the summary stays within ``budget_tokens`` of the
  summarization tokenizer (the profile's ``max_new_tokens``); when the most central sentence
  alone is over the budget, it is cut at a word boundary and closed with an ellipsis.

Each article is embedded on its own (its sentences form one batch), so an article's fallback
is the same whatever else shares the engine's micro-batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from core.article import Article
from serving.model.output_parser import split_sentences
from serving.model.prompt import clean_text
from serving.model.verifier import folded_words, repetitions

LEAD_BIAS = 0.02
DANGLING_PENALTY = 0.15
_DANGLING = re.compile(
    r"^(?:[\"“‘']|(?:but|and|or|so|yet|however|also|meanwhile|he|she|it|they|his|her|its|their|"
    r"this|that|these|those|there|then|still|instead|earlier|later)\b)",
    re.IGNORECASE,
)
MIN_WORDS = 4
_MAX_CHARS = 20_000  # the window's sentences lie far inside this

Embed = Callable[[Sequence[str]], torch.Tensor]


# "WASHINGTON (CNN) —", "SEOUL, Aug. 20 (Yonhap) --", "(CNN) --": place, date, agency, dash.
_DATELINE = re.compile(
    r"^(?:[A-Z][A-Z .'-]+(?:,\s*[A-Z][a-z]{2,8}\.?\s+\d{1,2})?\s*)?\([A-Za-z .]{2,30}\)\s*"
    r"(?:--|—|–|-)\s*"
)


def candidates(article: Article, window: int) -> list[str]:
    """The first ``window`` sentences of the article's text of ``MIN_WORDS`` words or more,
    without a wire dateline, leaving out any that loops (the verifier's repetition rule) and
    questions (unless there is nothing else)."""
    sentences = split_sentences(clean_text((article.text or "")[:_MAX_CHARS]))
    sentences = [_DATELINE.sub("", s, count=1) for s in sentences]
    kept = [
        s for s in sentences if len(s.split()) >= MIN_WORDS and not repetitions([folded_words(s)])
    ]
    statements = [s for s in kept if not s.rstrip("\"'”’)").endswith("?")]
    return (statements or kept)[:window]


def _order(article: Article, sentences: list[str], embed: Embed | None) -> list[int]:
    """Candidate indexes, most central first."""
    if embed is None or len(sentences) < 2:
        return list(range(len(sentences)))
    title = " ".join((article.title or "").split())
    vectors = embed([title, *sentences] if title else sentences)
    centroid = torch.nn.functional.normalize(vectors.mean(0), dim=0)
    own = vectors[1:] if title else vectors
    scores = [
        float(own[i] @ centroid)
        - LEAD_BIAS * i
        - (DANGLING_PENALTY if i and _DANGLING.match(sentences[i]) else 0.0)
        for i in range(len(sentences))
    ]
    return sorted(range(len(sentences)), key=lambda i: (-scores[i], i))


def _cut(sentence: str, budget_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest word-boundary prefix of ``sentence`` within the budget, with an ellipsis."""
    words = sentence.split()
    low, high = 1, len(words)
    while low < high:  # the largest n with count(words[:n] + "…") <= budget
        mid = (low + high + 1) // 2
        if count_tokens(" ".join(words[:mid]) + "…") <= budget_tokens:
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low]).rstrip(",;:-–—") + "…"


def extractive_summary(
    article: Article,
    *,
    budget_tokens: int,
    count_tokens: Callable[[str], int],
    embed: Embed | None = None,
    max_sentences: int = 2,
    window: int = 5,
) -> str | None:
    """The article's most central lead sentences within the budget (see the module docstring);
    None when its text has no sentence to take."""
    sentences = candidates(article, window)
    if not sentences:
        # Text without a sentence of four words (a list of fragments): its beginning.
        text = clean_text((article.text or "")[:_MAX_CHARS])
        if not text:
            return None
        if count_tokens(text) <= budget_tokens:
            return text
        return _cut(text, budget_tokens, count_tokens)
    best, *others = _order(article, sentences, embed)
    used = count_tokens(sentences[best])
    if used > budget_tokens:  # the best sentence cut beats a lesser one whole
        return _cut(sentences[best], budget_tokens, count_tokens)
    chosen = [best]
    for index in others:
        if len(chosen) == max_sentences:
            break
        cost = count_tokens(sentences[index]) + 1
        together = [folded_words(sentences[i]) for i in sorted([*chosen, index])]
        if used + cost <= budget_tokens and not repetitions(together):  # no repeated phrase
            chosen.append(index)
            used += cost
    return " ".join(sentences[i] for i in sorted(chosen))
