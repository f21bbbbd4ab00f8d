"""Batched greedy generation: invariance, equality with transformers' own generate (fp32),
and the bf16 path of the default profile on CPUs with native bf16."""

from __future__ import annotations

import pytest
import torch

from core.article import Article
from serving.engine.cpu.decoding import greedy_decode, left_pad
from serving.model.profiles import cpu_has_native_bf16, load_profile, resolve_dtype
from serving.model.prompt import build_prompt
from serving.model.result import Result
from tests.support.engine_articles import GRADED
from train.corpus import headline, lee_articles


@pytest.fixture(scope="module")
def mixed_articles(engine_settings) -> list[Article]:  # type: ignore[no-untyped-def]
    """8 real ABC articles of mixed lengths (~300 to ~3,800 characters)."""
    texts = sorted(lee_articles(engine_settings.resolved_state_dir()), key=len)
    picks = [texts[int(q * (len(texts) - 1))] for q in (0.0, 0.1, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0)]
    return [Article(id=i, title=headline(t), text=t, source="ABC") for i, t in enumerate(picks)]


@pytest.fixture(scope="module")
def fp32_engine(prepared_model_dir, engine_settings):  # type: ignore[no-untyped-def]
    """cpu-small pinned to fp32 (cpu-small-fp32): the reference arithmetic."""
    from serving.engine import SummarizeEngine

    return SummarizeEngine.load("cpu-small-fp32", engine_settings)


def _exact(result: Result) -> dict:
    return result.model_dump(exclude={"timings"})


def _rounded(result: Result) -> dict:
    data = _exact(result)
    data["importance"] = round(data["importance"], 1)
    data["importance_parts"]["model"] = round(data["importance_parts"]["model"], 1)
    return data


def _comparable(engine):  # type: ignore[no-untyped-def]
    """Bit for bit in bf16; fp32 (CPUs without native bf16) rounds rows of different batch
    sizes ~1e-7 apart (serving/engine/cpu/decoding.py): the rating is compared to 0.1 there."""
    return _exact if engine.profile.dtype == "bfloat16" else _rounded


def test_each_result_is_the_same_alone_and_in_a_mixed_batch_of_8(engine, mixed_articles) -> None:
    """Bit for bit (bf16), rating included: each row is prefilled alone into fixed slots and
    decode attention is batch-invariant (serving/engine/cpu/decoding.py,
    serving/engine/cpu/attention.py)."""
    assert engine.max_batch_size >= 8
    lengths = {len(a.text) for a in mixed_articles}
    assert max(lengths) > 4 * min(lengths)
    together = engine.summarize(mixed_articles)  # real greedy, the profile's 64 new tokens
    alone = [engine.summarize([a])[0] for a in mixed_articles]
    assert all(isinstance(r, Result) for r in together + alone)
    same = _comparable(engine)
    for a, b in zip(alone, together, strict=True):
        assert a.summary == b.summary
        assert same(a) == same(b)


def test_fp32_profile_is_batch_invariant_too(fp32_engine, mixed_articles) -> None:
    """fp32 sgemm rounds rows of different batch sizes ~1e-7 apart (serving/engine/cpu/decoding.py):
    the same summaries; the rating compared to 0.1."""
    picks = mixed_articles[1::2]
    together = fp32_engine.summarize(picks, max_new_tokens=32)
    alone = [fp32_engine.summarize([a], max_new_tokens=32)[0] for a in picks]
    assert [_rounded(r) for r in alone] == [_rounded(r) for r in together]


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU without native bf16 (fp32 there)")
def test_default_profile_runs_bf16_weights_with_fp32_attention(engine, fp32_engine) -> None:
    """dtype auto on a CPU with AVX512-BF16/AMX: bf16 matmuls, fp32 KV cache and attention,
    an id that says so; and the summaries stay close to fp32's (README "Engine")."""
    assert engine.profile.dtype == "bfloat16"
    assert next(engine.decoder.model.parameters()).dtype == torch.bfloat16
    assert engine.decoder.model.config._attn_implementation == "newsdesk_cpu"
    assert (
        engine.decoder.prefix is not None
        and engine.decoder.prefix.layers[0][0].dtype == torch.float32
    )
    assert engine.model_id.endswith("@bfloat16")
    assert "@" not in fp32_engine.model_id
    bf16 = [r.summary for r in engine.summarize(GRADED, max_new_tokens=48)]
    fp32 = [r.summary for r in fp32_engine.summarize(GRADED, max_new_tokens=48)]
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(a, b)["rougeL"].fmeasure for a, b in zip(fp32, bf16, strict=True)]
    assert sum(scores) / len(scores) > 0.6, scores


def test_auto_dtype_resolves_per_device() -> None:
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("float32", "cuda") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert resolve_dtype("auto", "cpu") == expected
    assert load_profile("cpu-small").resolved("cpu").dtype == expected
    assert load_profile("cpu-small-fp32").resolved("cpu").dtype == "float32"


def test_engine_decoding_equals_transformers_generate(fp32_engine, mixed_articles) -> None:
    """The engine's decode loop (with and without the shared-prefix cache, batched prefill or
    one row at a time into fixed slots) produces the tokens of transformers' ``generate`` on
    the same left-padded batch (fp32, transformers' own SDPA attention for generate)."""
    from transformers import AutoModelForCausalLM

    engine = fp32_engine
    bare = AutoModelForCausalLM.from_pretrained(engine.model_dir, dtype=torch.float32).eval()
    assert bare.config._attn_implementation == "sdpa"
    tok = engine.tokenizer
    prompts = [build_prompt(tok, a, 512).ids for a in mixed_articles[:4]]
    ids, mask = left_pad(prompts, engine.decoder.pad_id)
    width = ids.shape[1]
    assert mask.sum(-1).tolist() == [len(p) for p in prompts]  # padding on the left only
    assert all(ids[r, width - len(p) :].tolist() == p for r, p in enumerate(prompts))
    with torch.inference_mode():
        out = bare.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
    expected = []
    for row in out[:, width:].tolist():
        expected.append(
            row[: row.index(engine.decoder.eos_id) + 1] if engine.decoder.eos_id in row else row
        )
    layouts = {
        "batched prefill": {},
        "shared-prefix cache": {"prefix": engine.decoder.prefix},
        "rows into fixed slots": {"prefix": engine.decoder.prefix, "slots": engine.decoder.slots},
    }
    for name, options in layouts.items():
        decoded = greedy_decode(
            engine.decoder.model,
            prompts,
            pad_id=engine.decoder.pad_id,
            eos_id=engine.decoder.eos_id,
            max_new_tokens=24,
            **options,
        )
        assert decoded.tokens == expected, name


def test_int8_decode_variant_runs_the_int8_kernel_and_gives_valid_results(
    engine_settings, mixed_articles
) -> None:
    """The benchmark's int8-decode variant is real: every decoder Linear and the output layer
    become int8 in decode steps, and Results stay schema-valid. (Why no shipped profile enables
    it: serving/engine/cpu/int8.py.)"""
    from serving.engine import SummarizeEngine
    from serving.engine.cpu.int8 import Int8DecodeLinear

    profile = load_profile("cpu-small-fp32")
    profile = profile.model_copy(
        update={"cpu": profile.cpu.model_copy(update={"int8_decode": True})}
    )
    variant = SummarizeEngine.load(profile, engine_settings)
    assert variant.model_id.endswith("+int8dec")
    assert (
        sum(isinstance(m, Int8DecodeLinear) for m in variant.decoder.model.modules()) == 30 * 7 + 1
    )
    outcomes = variant.summarize(mixed_articles[:2], max_new_tokens=24)
    assert all(isinstance(r, Result) and r.summary for r in outcomes)


def test_fast_profile_cuts_the_prompt_and_keeps_batch_invariance(
    engine_settings, mixed_articles
) -> None:
    """``cpu-small-fast`` (the same fp32 engine, 320 prompt tokens) keeps each article's Result
    the same alone and batched."""
    from serving.engine import SummarizeEngine
    from serving.model.prompt import build_prompt

    fast = SummarizeEngine.load("cpu-small-fast", engine_settings)
    assert fast.profile.max_prompt_tokens == 320
    picks = mixed_articles[::2]  # 4 articles, short to long
    assert len(build_prompt(fast.tokenizer, picks[-1], 320).ids) == 320
    together = fast.summarize(picks, max_new_tokens=32)
    alone = [fast.summarize([a], max_new_tokens=32)[0] for a in picks]
    assert all(isinstance(r, Result) for r in together + alone)
    same = _comparable(fast)
    assert [same(r) for r in alone] == [same(r) for r in together]


def test_generate_path_gives_the_greedy_loops_tokens_and_ratings(
    fp32_engine, mixed_articles
) -> None:
    """The ``model.generate`` path (used under DeepSpeed kernel injection or tensor
    parallelism on GPU) runs on CPU too: same tokens and rating as the engine's own loop."""
    engine = fp32_engine
    prompts = [build_prompt(engine.tokenizer, a, 512).ids for a in mixed_articles[:3]]
    via_generate = engine.decoder.decode_with_generate(prompts, 24)
    via_loop = engine.decoder.decode(prompts, 24)
    assert via_generate.tokens == via_loop.tokens
    assert torch.allclose(via_generate.rating_probs, via_loop.rating_probs, atol=1e-4)


@pytest.fixture(scope="module")
def shipped_adapter_engine(prepared_model_dir, engine_settings):  # type: ignore[no-untyped-def]
    """cpu-small-selfdistill: the default model with the adapter shipped in configs/adapters."""
    from serving.engine import SummarizeEngine

    return SummarizeEngine.load("cpu-small-selfdistill", engine_settings)


def test_the_shipped_adapter_loads_and_stays_batch_invariant(
    shipped_adapter_engine, engine, mixed_articles
) -> None:
    """What `make run` serves: the LoRA layers keep every row's bits alone and in a batch."""
    adapted = shipped_adapter_engine
    assert adapted.adapter_id and adapted.adapter_id.startswith("cpu-small-selfdistill@")
    picks = mixed_articles[::2]
    together = adapted.summarize(picks)
    alone = [adapted.summarize([a])[0] for a in picks]
    same = _comparable(adapted)
    assert [same(r) for r in alone] == [same(r) for r in together]
    base = engine.summarize(picks)
    assert [r.summary for r in together] != [r.summary for r in base]  # the adapter is applied
