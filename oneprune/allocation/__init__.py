"""Where to prune: how a target sparsity is spread over the prunable layers.

At every `Pruner.prune_to(s)` the pruner's allocation turns the target of that moment of
the schedule into the units (weights, or whole filters) each layer prunes. A schedule's
ramp and an allocation therefore combine at every mask update.

Each allocation is one module of this package: a frozen dataclass that registers itself by
its `name` (`ALLOCATIONS`), declares its own arguments as fields (`oneprune.parameters`:
check, default search range, help; a `Pruner` takes them as `allocation_args`, the way
models take `model_args`) and says either how dense each layer is relative to the others
(`density`) or how one ranking over all layers selects the pruned units (`select`):

- `uniform`: every layer prunes the same fraction (what `scope: local` was).
- `global`: one magnitude ranking over all layers (what `scope: global` was).
- `erk`: Erdős-Rényi-Kernel (Evci et al. 2020, RigL), weights only.
- `lamp`: LAMP (Lee et al. 2021): one global ranking of layer-normalised scores.
- `uniform_plus` (Gale et al. 2019): the first pruned layer dense, the last at least 20%.
- `depth`: density proportional to exp(-exponent * u) along the depth.

Rules every allocation keeps (`oneprune.allocation.base`): the total is exact, round(s * N)
of the N units (capped so that every layer keeps at least one unit); a layer's budget never
falls below what it has pruned already (masks are monotone); budgets are rounded by
largest remainder, ties to the earlier layer, so every rank of a DDP run computes the same
ones.

    >>> from oneprune.allocation import allocation_of
    >>> allocation_of("depth", {"exponent": 2.0})
    Depth(exponent=2.0)
    >>> allocation_of("depth", {"exponent": 12})
    Traceback (most recent call last):
    ...
    ValueError: allocation_args.exponent must be in [-8, 8], got 12.0
"""

from oneprune.allocation.base import (
    ALLOCATIONS,
    SCOPE_NAMES,
    Allocation,
    allocation_of,
    from_scope,
)

# The built-in allocations, each registering itself as it is imported, in the order the
# documentation lists them (a new one: its module, and its line here).
# isort: off
from oneprune.allocation import uniform, global_ranking, erk, lamp, uniform_plus, depth  # noqa: F401, E501
# isort: on

__all__ = ["ALLOCATIONS", "SCOPE_NAMES", "Allocation", "allocation_of", "from_scope"]
