"""The hint engine: memory of past tasks, the small model, and the decision."""
