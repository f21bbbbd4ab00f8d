"""The model contract, importing neither torch nor Ray: what a summary is and how it is judged.

- :mod:`.prompt`: the prompt, the input gate and the text cleaning every path shares;
- :mod:`.output_parser`: the model's output read back into a summary;
- :mod:`.verifier`: the rules a summary must pass against its article;
- :mod:`.result`: the Result and ArticleError every path returns;
- :mod:`.versions`: model, adapter and prompt versions and the cache key built on them;
- :mod:`.profiles`: the model profiles (``configs/models/``);
- :mod:`.training_example`: one training pair in the serving prompt's shape.
"""
