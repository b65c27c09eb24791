"""Pieces of the learning benchmark (``python -m bench.learning``): the proxy and learner
processes, the agent that drives an arm, and the report."""
