"""Magnitude pruning with exact counts, monotone masks and an untouched forward pass.

`Pruner` owns one mask per prunable layer. `prune_to(s)` makes the model exactly s sparse
and zeroes what it pruned; `apply_masks()`, called after every optimizer step, zeroes the
pruned weights again (momentum and weight decay revive them otherwise) and their
gradients, in one fused `torch._foreach_mul_` for all layers. Nothing is hooked into the
forward pass, so a dense model runs at dense speed.

Rules, in one place:

- Units. `granularity="weight"` prunes single weights scored by |w|; `"filter"` prunes
  whole output filters (slices along dim 0 of the weight) scored by their RMS,
  sqrt(mean(w^2)) = L2 norm / sqrt(fan-in). The RMS is on the same scale as a single
  weight's magnitude whatever a layer's fan-in, which is what makes filters of different
  layers comparable under global scope; a plain L2 norm would favour wide layers.
- Counts. Local scope prunes exactly round(s * n) of each layer's n units; global scope
  prunes exactly round(s * N) of all N units, ranked together. Selection is by rank:
  `torch.kthvalue` finds the k-th smallest score, everything below it is pruned, and ties
  at it are broken by position (layer order, then flat index). So counts are exact under
  ties and pre-existing zeros, and no `torch.quantile` (limited to 2^24 elements) is used.
- A layer is never emptied: at least one unit per layer survives (local: at most n - 1 are
  pruned; global: each layer's highest-scoring live unit is kept out of the ranking).
- Monotone: a pruned unit stays pruned. Pruned units rank below every live one, so a higher
  target extends the pruned set, and a target below the current sparsity changes nothing.
- DDP: masks are a deterministic function of the weights (no randomness, no reductions
  whose order varies, position tie-break), and DDP keeps weights identical on every rank
  (same initial broadcast, all-reduced gradients), so every rank computes the same masks
  without any communication.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from oneprune import _validate

SCOPES = ("local", "global")
GRANULARITIES = ("weight", "filter")
LAYER_KINDS: dict[str, type[nn.Module]] = {"conv": nn.Conv2d, "linear": nn.Linear}


def _names(key: str, value, allowed=None) -> tuple[str, ...]:
    """A string or a list of distinct non-empty strings (from `allowed`, if given)."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not all(
            isinstance(v, str) and v for v in values):
        raise ValueError(f"{key} must be a name or a list of names, got {value!r}")
    for v in values:
        if allowed is not None:
            _validate.choice(key, v, allowed)
    if len(set(values)) != len(values):
        raise ValueError(f"{key} lists a value twice: {value!r}")
    return tuple(values)


@dataclass(frozen=True)
class PruneSelection:
    """Which layers a `Pruner` prunes: every layer of the `layers` kinds (`LAYER_KINDS`:
    "conv" is `nn.Conv2d`, "linear" `nn.Linear`) whose module name matches none of the
    `exclude` patterns (`fnmatch`, e.g. "conv1", "layer4.*", "*.fc"). The default, every
    Conv2d, is the paper's."""

    layers: tuple[str, ...] = field(default=("conv",), metadata={
        "help": f"layer kinds to prune: {', '.join(LAYER_KINDS)}", "metavar": "KIND"})
    exclude: tuple[str, ...] = field(default=(), metadata={
        "help": "module-name patterns to leave dense, e.g. conv1 'layer4.*'",
        "metavar": "PATTERN"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _names("prune.layers", self.layers,
                                                  tuple(LAYER_KINDS)))
        if not self.layers:
            raise ValueError("prune.layers must name at least one of "
                             f"{', '.join(LAYER_KINDS)}")
        object.__setattr__(self, "exclude", _names("prune.exclude", self.exclude))

    @property
    def layer_types(self) -> tuple[type[nn.Module], ...]:
        return tuple(LAYER_KINDS[kind] for kind in self.layers)

    def to_dict(self) -> dict[str, list[str]]:
        """Plain JSON/YAML-ready dict; `PruneSelection.parse` inverts it."""
        return {"layers": list(self.layers), "exclude": list(self.exclude)}

    @classmethod
    def parse(cls, key: str, value: Any) -> PruneSelection:
        """A `PruneSelection`, or one from a mapping with keys `layers` and `exclude`."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping) or set(value) - {"layers", "exclude"}:
            raise ValueError(f"{key} must be a mapping with keys layers and exclude, "
                             f"got {value!r}")
        try:
            return cls(**value)
        except ValueError as error:
            raise ValueError(str(error).replace("prune.", f"{key}.", 1)) from None


class LayerSparsity(NamedTuple):
    """One row of `Pruner.layer_report()`."""

    name: str
    weights: int
    pruned: int
    sparsity: float


_SAMPLE = 1 << 16  # largest sample of `kth_smallest`'s bracketing pass
_BRACKET_CPU = 1 << 15  # on CPU, bracket from this many scores on (GPU: above 16 * _SAMPLE)


def kth_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k-th smallest (1-based) value of 1-D `scores`, as a 0-d tensor.

    On large inputs a full `torch.kthvalue` is the bottleneck of a prune (on CPU already
    from a few 10k scores, where it is several times slower than a pass that compares), so
    a strided sample first brackets the answer (Floyd-Rivest): the sample's ranks around
    k/n, widened by 3 sqrt(sample) (6 standard deviations of a random sample's rank),
    give [low, high]; `kthvalue` then runs on the few entries inside. Ties at `low` (such
    as the pruned units' common score) are counted rather than ranked. When the bracket
    misses (a sample that is not representative), the full `kthvalue` answers.
    """
    n = scores.numel()
    small = n <= 16 * _SAMPLE and not (scores.device.type == "cpu" and n >= _BRACKET_CPU)
    if small or torch.isnan(scores.sum()):  # NaN (kthvalue sorts it last): no bracket
        return torch.kthvalue(scores, k).values
    sample = scores[:: n // min(_SAMPLE, n // 16)]
    size = sample.numel()
    position, margin = k / n * size, 3.0 * size ** 0.5
    low = torch.kthvalue(sample, min(max(int(position - margin), 0), size - 1) + 1).values
    high = torch.kthvalue(sample, min(int(position + margin), size - 1) + 1).values
    above_low = scores > low
    up_to_low = n - int(torch.count_nonzero(above_low))
    if k > up_to_low:  # the usual case: the answer is inside (low, high] or a miss
        inside = scores[above_low & (scores <= high)]
        if k - up_to_low <= inside.numel():
            return torch.kthvalue(inside, k - up_to_low).values
    elif k > int(torch.count_nonzero(scores < low)):
        return low
    return torch.kthvalue(scores, k).values


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly the `k` smallest entries of 1-D `scores`, ties by lower index."""
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth = kth_smallest(scores, k)
    selected = scores <= kth
    extra = int(torch.count_nonzero(selected)) - k
    if extra > 0:  # ties at the k-th value: only the first (lowest index) ones are needed
        tied = torch.nonzero(scores == kth).flatten()
        selected[tied[tied.numel() - extra:]] = False
    return selected


class Pruner:
    """Prunes the weights of `model`'s layers of `layer_types` by magnitude.

    Args:
        model: the network; its prunable layers are found once, here.
        scope: "local" (every layer gets the target sparsity) or "global" (one ranking
            over all prunable layers).
        granularity: "weight" (unstructured) or "filter" (whole output filters).
        layer_types: module classes whose `weight` is pruned (default: `nn.Conv2d`).
        exclude: module-name patterns (`fnmatch`, e.g. "conv1" or "layer4.*") to leave
            dense; a pattern that matches no prunable layer is an error.

    `Pruner.of(model, selection, ...)` takes both from a `PruneSelection`.

    Example: make two conv layers 75% sparse, then keep them so after an optimizer step.

    >>> import torch
    >>> from torch import nn
    >>> from oneprune.pruning import Pruner
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3))
    >>> pruner = Pruner(model)
    >>> pruner.prune_to(0.75)
    >>> pruner.sparsity()
    0.75
    >>> [(row.name, row.weights, row.pruned) for row in pruner.layer_report()]
    [('0', 36, 27), ('2', 288, 216)]
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    >>> model(torch.randn(2, 1, 8, 8)).sum().backward()
    >>> optimizer.step()
    >>> pruner.apply_masks()  # zero the pruned weights again (weight decay moved them)
    >>> int((model[2].weight == 0).sum())
    216
    """

    def __init__(self, model: nn.Module, scope: str = "local", granularity: str = "weight",
                 layer_types: type | tuple[type, ...] = (nn.Conv2d,),
                 exclude: str | Iterable[str] = ()):
        self.scope = _validate.choice("scope", scope, SCOPES)
        self.granularity = _validate.choice("granularity", granularity, GRANULARITIES)
        if isinstance(layer_types, type):
            layer_types = (layer_types,)
        layer_types = tuple(layer_types)
        if not layer_types or not all(isinstance(t, type) and issubclass(t, nn.Module)
                                      for t in layer_types):
            raise ValueError(f"layer_types must be nn.Module subclasses, got {layer_types!r}")
        patterns = [exclude] if isinstance(exclude, str) else list(exclude)

        candidates = [(name, module) for name, module in model.named_modules()
                      if isinstance(module, layer_types)
                      and isinstance(getattr(module, "weight", None), nn.Parameter)]
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in candidates):
                raise ValueError(f"exclude pattern {pattern!r} matches no prunable layer; "
                                 f"layers: {', '.join(name for name, _ in candidates)}")
        self._layers = [(name, module) for name, module in candidates
                        if not any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        if not self._layers:
            raise ValueError(f"model has no prunable layers of types "
                             f"{[t.__name__ for t in layer_types]} left after exclude")
        # Per layer: which units (weights or filters) are alive, and the weight-shaped
        # 0/1 mask that apply_masks multiplies with (kept in the weight's dtype and device).
        self._alive = [torch.ones(self._unit_count(m.weight), dtype=torch.bool,
                                  device=m.weight.device) for _, m in self._layers]
        self._masks = [torch.ones_like(m.weight) for _, m in self._layers]

    @classmethod
    def of(cls, model: nn.Module, selection: PruneSelection, scope: str = "local",
           granularity: str = "weight") -> Pruner:
        """A pruner of the layers `selection` picks in `model`."""
        return cls(model, scope, granularity, layer_types=selection.layer_types,
                   exclude=selection.exclude)

    # -- units ----------------------------------------------------------------------------

    def _unit_count(self, weight: torch.Tensor) -> int:
        return weight.shape[0] if self.granularity == "filter" else weight.numel()

    def _unit_size(self, weight: torch.Tensor) -> int:
        return weight[0].numel() if self.granularity == "filter" else 1

    def _scores(self, i: int) -> torch.Tensor:
        """Magnitude of every unit of layer i as a 1-D float tensor; pruned units score -1."""
        w, alive = self._layers[i][1].weight.detach(), self._alive[i]
        if self.granularity == "filter":
            magnitude = w.flatten(1).float().pow(2).mean(dim=1).sqrt()
        else:
            magnitude = w.abs().flatten().float()
            if magnitude.device.type == "cpu":
                # Branch-free on CPU, where masked_fill with a scattered mask is several
                # times slower: |w| * 1 + 0 = |w| for live weights, |w| * 0 - 1 = -1 for
                # pruned ones. Scores are >= -1 or NaN, so the sum is NaN only if a score
                # is (a non-finite weight): then the rule below.
                mask = self._masks[i].flatten().float()
                scores = torch.addcmul(mask - 1.0, magnitude, mask)
                if not torch.isnan(scores.sum()):
                    return scores
        return magnitude.masked_fill_(~alive, -1.0)

    # -- pruning --------------------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """Names (as in `model.named_modules()`) of the layers this pruner prunes."""
        return [name for name, _ in self._layers]

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Prune to `sparsity` in [0, 1) of the units (see the module docstring's rules)
        and zero the pruned weights at once."""
        target = _validate.real("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        self._follow_weights()
        if self.scope == "local":
            for i, alive in enumerate(self._alive):
                n, pruned = alive.numel(), alive.numel() - int(torch.count_nonzero(alive))
                k = min(round(target * n), n - 1)
                if k > pruned:
                    self._set_alive(i, ~_smallest(self._scores(i), k))
        else:
            scores = [self._scores(i) for i in range(len(self._layers))]
            for layer_scores in scores:  # each layer's best live unit is never ranked
                layer_scores[layer_scores.argmax()] = float("inf")
            ranking = torch.cat(scores)
            n = ranking.numel()
            pruned = n - sum(int(torch.count_nonzero(alive)) for alive in self._alive)
            k = min(round(target * n), n - len(scores))
            if k > pruned:
                selected = _smallest(ranking, k).split([s.numel() for s in scores])
                for i, layer_selected in enumerate(selected):
                    self._set_alive(i, ~layer_selected)
        self.apply_masks()

    def _set_alive(self, i: int, alive: torch.Tensor) -> None:
        weight = self._layers[i][1].weight
        self._alive[i] = alive
        shape = (-1,) + (1,) * (weight.dim() - 1) if self.granularity == "filter" else weight.shape
        self._masks[i] = torch.empty_like(weight).copy_(alive.view(shape))  # weight's layout

    def _follow_weights(self) -> list[torch.Tensor]:
        """The layers' weights, with masks moved to their device and dtype if the model was
        moved or cast (`model.to(...)`) since the masks were made."""
        weights = [module.weight for _, module in self._layers]
        for i, weight in enumerate(weights):
            if self._masks[i].device != weight.device or self._masks[i].dtype != weight.dtype:
                self._masks[i] = self._masks[i].to(weight.device, weight.dtype)
                self._alive[i] = self._alive[i].to(weight.device)
        return weights

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights and their gradients (call after `optimizer.step()`)."""
        weights = self._follow_weights()
        tensors, masks = list(weights), list(self._masks)
        for weight, mask in zip(weights, self._masks, strict=True):
            if weight.grad is not None:
                tensors.append(weight.grad)
                masks.append(mask)
        torch._foreach_mul_(tensors, masks)

    # -- measurement ----------------------------------------------------------------------

    def layer_report(self) -> list[LayerSparsity]:
        """Per prunable layer: weights, pruned weights and their fraction."""
        rows = []
        for (name, module), alive in zip(self._layers, self._alive, strict=True):
            weights = module.weight.numel()
            pruned_units = alive.numel() - int(torch.count_nonzero(alive))
            pruned = pruned_units * self._unit_size(module.weight)
            rows.append(LayerSparsity(name, weights, pruned, pruned / weights))
        return rows

    def sparsity(self) -> float:
        """Measured fraction of pruned weights over all prunable layers."""
        rows = self.layer_report()
        return sum(r.pruned for r in rows) / sum(r.weights for r in rows)

    # -- persistence ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Weight-shaped bool masks by layer name, loadable with `weights_only=True`."""
        return {"granularity": self.granularity,
                "masks": {name: mask.bool()
                          for name, mask in zip(self.layer_names, self._masks, strict=True)}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore masks saved by `state_dict()` and zero the pruned weights at once."""
        if not isinstance(state, dict) or not isinstance(state.get("masks"), dict):
            raise ValueError("state must be a Pruner.state_dict() with a 'masks' mapping")
        if state.get("granularity") != self.granularity:
            raise ValueError(f"state granularity must be {self.granularity!r}, "
                             f"got {state.get('granularity')!r}")
        masks = state["masks"]
        if set(masks) != set(self.layer_names):
            raise ValueError(f"state masks must name exactly the layers {self.layer_names}, "
                             f"got {sorted(masks)}")
        alive_per_layer = []
        for name, module in self._layers:
            mask = torch.as_tensor(masks[name], dtype=torch.bool, device=module.weight.device)
            if mask.shape != module.weight.shape:
                raise ValueError(f"state mask {name!r} must have shape "
                                 f"{tuple(module.weight.shape)}, got {tuple(mask.shape)}")
            alive = mask.flatten(1).any(dim=1) if self.granularity == "filter" else mask.flatten()
            if self.granularity == "filter" and not torch.equal(
                    mask.flatten(1).all(dim=1), alive):
                raise ValueError(f"state mask {name!r} is not filter-structured")
            if not alive.any():
                raise ValueError(f"state mask {name!r} prunes the whole layer")
            alive_per_layer.append(alive)
        for i, alive in enumerate(alive_per_layer):
            self._set_alive(i, alive)
        self.apply_masks()

    def __repr__(self) -> str:
        return (f"Pruner(scope={self.scope!r}, granularity={self.granularity!r}, "
                f"layers={len(self._layers)}, sparsity={self.sparsity():.4f})")
