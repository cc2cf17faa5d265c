"""Trainer micro-benchmarks: ``python -m trainer.bench.<name> --help``. Each times arms that differ by one flag
of the current code (precision, attention, rollout engine, shared-prefix forward), alternating on the same
batches and weights, and prints the figures side by side."""
