"""oneprune: pruning schedules as tunable objects, and an exact magnitude pruner.

The library is pure PyTorch (no Ray, no MLflow): `oneprune.schedules` says which sparsity
to reach at each moment of training, `oneprune.pruning.Pruner` makes a network exactly
that sparse. The search service in `search/` tunes and compares schedules on top of it.
"""

__version__ = "0.1.0"
