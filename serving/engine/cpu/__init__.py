"""The engine's CPU runtime, private to :mod:`serving.engine` (and its benchmarks).

- :mod:`.decoding`: the fixed-slot greedy/sampled decode loop;
- :mod:`.slot_decoding`: continuous batching's slots (rows join and leave mid-way);
- :mod:`.lean_step`: a LLaMA decode step over the slot cache, its small ops in C;
- :mod:`.attention`: batch-invariant attention (the engine's kernels or PyTorch's);
- :mod:`.packed_linear`: Linears packed once for the CPU's matmul kernels;
- :mod:`.int8`: the optional int8 variants, kept for comparison;
- :mod:`.kernels`: the C kernels, built on first use.
"""
