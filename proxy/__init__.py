"""Tactician: a learning OpenAI-compatible proxy."""

__version__ = "0.1.0"
