"""The r2rank contract: what a ranker sees and how its answer becomes a score, shared by service and trainer.

A leaf package: it imports tokenizers/transformers (and pydantic for the manifest), never a web framework,
Redis, Prometheus or an engine, so training does not pull in the service and the service cannot drift from
what the trainer taught.

- ``contract.prompt``: the versioned text format (``PROMPT_FORMAT``, cues, cleaning, the score).
- ``contract.evidence``: the facts one (history, candidate) pair's prompt states, and the faithfulness check.
- ``contract.sequence``: the next-item rank, a shipped sequence model's forward pass in NumPy.
- ``contract.assembly``: ``PromptAssembler``, the one place where titles and rationales become token ids.
- ``contract.checkpoint``: ``manifest.json``, ``open_checkpoint`` and ``write_checkpoint_manifest``.
"""
