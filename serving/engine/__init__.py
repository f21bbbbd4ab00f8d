"""The summarize-and-rate engine: articles in, one Result or ArticleError each, in input order.

Callers use :class:`SummarizeEngine` (``SummarizeEngine.load(profile, settings)``) through
the small :class:`Engine` protocol. One concern per module:

- :mod:`.engine`: :class:`SummarizeEngine`, the orchestration of the parts below;
- :mod:`.protocol`: :class:`Engine`, what callers may rely on;
- :mod:`.loading`: tokenizer and model from the profile, DeepSpeed inference, CPU options;
- :mod:`.adapters`: PEFT LoRA adapters applied, swapped, removed, merged;
- :mod:`.identity`: model_id, adapter_id and prompt_version (``engine.versions``);
- :mod:`.batching`: micro-batches by prompt length, failures contained to one article;
- :mod:`.generate`: the decode calls (the engine's loop in :mod:`serving.decoding`, or
  ``model.generate`` under DeepSpeed kernel injection);
- :mod:`.guard`: parse, verify, retry, the extractive fallback;
- :mod:`.results`: Result and ArticleError assembly (importance, timings, versions);
- :mod:`.candidates`: sampled candidates for training's self-verified teacher.
"""

from serving.engine.candidates import Candidate, candidate_seed
from serving.engine.engine import SummarizeEngine
from serving.engine.protocol import Engine

__all__ = ["Candidate", "Engine", "SummarizeEngine", "candidate_seed"]
