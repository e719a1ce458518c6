"""Test accuracies of two families over five final seeds, as a verdict sees them."""

import numpy as np

SEEDS = [1, 2, 3, 4, 5]
# Seed effects shared by both families (the same initial weights and batch order), and a
# small, steady advantage of the second: paired, it is clear; unpaired, it is drowned.
SEED_EFFECT = np.array([0.00, 0.04, -0.03, 0.02, -0.05])
ONE_CYCLE = 0.90 + SEED_EFFECT
AGP = 0.905 + SEED_EFFECT + np.array([0.001, -0.001, 0.002, 0.0, -0.0055])
