"""Training candidates and deciding whether they serve: run configs and recipes that train a LoRA adapter (SFT,
DPO, KTO) or full weights on a synth dataset (``train``, ``recipes``, ``config``, ``data``); the registry of
immutable, hash-checked versions with their lifecycle and the serving pointer (``registry``, ``versions``,
``version_files``, ``registry_files``); following that pointer while serving, locally or on a vLLM server
(``serving``, ``remote_serving``); the pure parts of the gates, from the held-out sets to the verdict
(``gate_sets``, ``answer_metrics``, ``probes``, ``forgetting``, ``drift``, ``checks``, ``decisions``, ``report``);
and the durable job queue the worker runs cycles from (``jobs``). Nothing here builds an agent: the gate run and
the cycle that wire models, agent and data together live in ``affinage.gating`` and ``affinage.cycle``."""
