"""Reasoning engines: the interface (``base``), construction (``factory``) and the two vLLM backends."""
