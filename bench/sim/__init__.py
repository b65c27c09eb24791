"""Simulated big model and worlds for the learning benchmark (see WORLD_SPEC.md)."""

from bench.sim.loader import load_world, parse_world, world_from_data
from bench.sim.world import Task, World, WorldError, draw

__all__ = ["Task", "World", "WorldError", "draw", "load_world", "parse_world", "world_from_data"]
