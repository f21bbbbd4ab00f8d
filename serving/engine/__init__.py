"""The summarize-and-rate engine: articles in, one Result or ArticleError each, in input order.

Callers use :class:`SummarizeEngine` (``SummarizeEngine.load(profile, settings)``) through
the small :class:`Engine` protocol. One concern per module:

- :mod:`.engine`: :class:`SummarizeEngine`, the orchestration of the parts below;
- :mod:`.protocol`: :class:`Engine`, what callers may rely on;
- :mod:`.loading`: tokenizer and model from the profile, DeepSpeed inference, CPU options;
- :mod:`.adapters`: PEFT LoRA adapters applied, swapped, removed, merged;
- :mod:`.identity`: model_id, adapter_id and prompt_version (``engine.versions``);
- :mod:`.batching`: micro-batches by prompt length, failures contained to one article;
- :mod:`.generate`: the decode calls (the engine's loop in :mod:`serving.engine.cpu.decoding`, or
  ``model.generate`` under DeepSpeed kernel injection);
- :mod:`.guard`: parse, verify, retry, the extractive fallback;
- :mod:`.result_assembly`: Result and ArticleError assembly (importance, timings, versions);
- :mod:`.model_source`: where the weights come from (a package, a local folder, the hub);
- :mod:`.importance`: the embedding prior and topics (all-MiniLM-L6-v2);
- :mod:`.extractive`: the extractive fallback's choice of sentences;
- :mod:`.cpu`: the CPU runtime the engine runs on (private to the engine and its benchmarks).
- :mod:`.candidates`: sampled candidates for training's self-verified teacher.
"""

from serving.engine.candidates import Candidate, candidate_seed
from serving.engine.engine import SummarizeEngine
from serving.engine.protocol import Engine

__all__ = ["Candidate", "Engine", "SummarizeEngine", "candidate_seed"]
