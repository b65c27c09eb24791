"""Simulated big model and worlds for the learning benchmark (see WORLD_SPEC.md)."""

from bench.sim.loader import OFFICE_OPS, OWN_WORLDS, load_world, parse_world, world_from_data
from bench.sim.world import Task, World, WorldError, draw

__all__ = ["OFFICE_OPS", "OWN_WORLDS", "Task", "World", "WorldError", "draw", "load_world",
           "parse_world", "world_from_data"]
