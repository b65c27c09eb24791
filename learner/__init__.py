"""Tactician learner: LoRA training on the local hint model and export to llama.cpp."""
