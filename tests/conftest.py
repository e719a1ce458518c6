"""Test settings shared by the whole suite."""

from hypothesis import settings

# Torch's first calls are slow to warm up; hypothesis' per-example deadline would flake.
settings.register_profile("oneprune", deadline=None, max_examples=100)
settings.load_profile("oneprune")
