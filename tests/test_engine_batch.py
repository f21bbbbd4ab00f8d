"""Batched greedy generation: invariance, and equality with transformers' own generate."""

from __future__ import annotations

import pytest
import torch

from cluster.sample_data import lee_articles
from ingestion.article import Article
from serving.decoding import greedy_decode, left_pad
from serving.prompt import build_prompt
from serving.result import Result
from tests.engine_articles import headline


@pytest.fixture(scope="module")
def mixed_articles(engine_settings) -> list[Article]:  # type: ignore[no-untyped-def]
    """8 real ABC articles of mixed lengths (~300 to ~3,800 characters)."""
    texts = sorted(lee_articles(engine_settings.resolved_state_dir()), key=len)
    picks = [texts[int(q * (len(texts) - 1))] for q in (0.0, 0.1, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0)]
    return [Article(id=i, title=headline(t), text=t, source="ABC") for i, t in enumerate(picks)]


def _comparable(result: Result) -> dict:
    data = result.model_dump(exclude={"timings"})
    # Float arithmetic of a different batch shape may move the last bits of the rating.
    data["importance"] = round(data["importance"], 1)
    data["importance_parts"]["model"] = round(data["importance_parts"]["model"], 1)
    return data


def test_each_result_is_the_same_alone_and_in_a_mixed_batch_of_8(engine, mixed_articles) -> None:
    assert engine.max_batch_size >= 8
    lengths = {len(a.text) for a in mixed_articles}
    assert max(lengths) > 4 * min(lengths)
    together = engine.summarize(mixed_articles)  # real greedy, the profile's 64 new tokens
    alone = [engine.summarize([a])[0] for a in mixed_articles]
    assert all(isinstance(r, Result) for r in together + alone)
    for a, b in zip(alone, together, strict=True):
        assert a.summary == b.summary
        assert _comparable(a) == _comparable(b)


def test_engine_decoding_equals_transformers_generate(engine, mixed_articles) -> None:
    """The engine's decode loop (with and without the shared-prefix cache) produces the
    tokens of transformers' ``generate`` on the same left-padded batch."""
    tok = engine.tokenizer
    prompts = [build_prompt(tok, a, 512).ids for a in mixed_articles[:4]]
    ids, mask = left_pad(prompts, engine._pad_id)
    width = ids.shape[1]
    assert mask.sum(-1).tolist() == [len(p) for p in prompts]  # padding on the left only
    assert all(ids[r, width - len(p) :].tolist() == p for r, p in enumerate(prompts))
    with torch.inference_mode():
        out = engine._base.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False
        )
    expected = []
    for row in out[:, width:].tolist():
        expected.append(row[: row.index(engine._eos_id) + 1] if engine._eos_id in row else row)
    plain = greedy_decode(
        engine._model, prompts, pad_id=engine._pad_id, eos_id=engine._eos_id, max_new_tokens=24
    )
    cached = greedy_decode(
        engine._model,
        prompts,
        pad_id=engine._pad_id,
        eos_id=engine._eos_id,
        max_new_tokens=24,
        prefix=engine._prefix,
    )
    assert plain.tokens == expected
    assert cached.tokens == expected


def test_int8_decode_variant_runs_the_int8_kernel_and_gives_valid_results(
    engine_settings, mixed_articles
) -> None:
    """The benchmark's int8-decode variant is real: every decoder Linear and the output layer
    become int8 in decode steps, and Results stay schema-valid. (It is not batch-invariant:
    see serving/cpu_speedups.py; no shipped profile enables it.)"""
    from serving.cpu_speedups import Int8DecodeLinear
    from serving.engine import SummarizeEngine
    from serving.profiles import load_profile

    profile = load_profile("cpu-small")
    profile = profile.model_copy(
        update={"cpu": profile.cpu.model_copy(update={"int8_decode": True})}
    )
    variant = SummarizeEngine.load(profile, engine_settings)
    assert variant.model_id.endswith("+int8dec")
    assert sum(isinstance(m, Int8DecodeLinear) for m in variant._model.modules()) == 30 * 7 + 1
    outcomes = variant.summarize(mixed_articles[:2], max_new_tokens=24)
    assert all(isinstance(r, Result) and r.summary for r in outcomes)


def test_fast_profile_cuts_the_prompt_and_keeps_batch_invariance(
    engine_settings, mixed_articles
) -> None:
    """``cpu-small-fast`` (the same fp32 engine, 320 prompt tokens) keeps each article's Result
    the same alone and batched."""
    from serving.engine import SummarizeEngine
    from serving.prompt import build_prompt

    fast = SummarizeEngine.load("cpu-small-fast", engine_settings)
    assert fast.profile.max_prompt_tokens == 320
    picks = mixed_articles[::2]  # 4 articles, short to long
    assert len(build_prompt(fast.tokenizer, picks[-1], 320).ids) == 320
    together = fast.summarize(picks, max_new_tokens=32)
    alone = [fast.summarize([a], max_new_tokens=32)[0] for a in picks]
    assert all(isinstance(r, Result) for r in together + alone)
    assert [_comparable(r) for r in alone] == [_comparable(r) for r in together]


def test_generate_path_gives_the_greedy_loops_tokens_and_ratings(engine, mixed_articles) -> None:
    """The ``model.generate`` path (used under DeepSpeed kernel injection or tensor
    parallelism on GPU) runs on CPU too: same tokens and rating as the engine's own loop."""
    prompts = [build_prompt(engine.tokenizer, a, 512).ids for a in mixed_articles[:3]]
    via_generate = engine._decode_with_generate(prompts, 24)
    via_loop = engine._decode(prompts, 24)
    assert via_generate.tokens == via_loop.tokens
    assert torch.allclose(via_generate.rating_probs, via_loop.rating_probs, atol=1e-4)
