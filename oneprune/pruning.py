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
  layers comparable in one ranking; a plain L2 norm would favour wide layers. A pruned
  filter also zeroes its bias and the BatchNorm channel that reads it (when the pruner
  is given `example_inputs` to find it), so the channel is exactly zero and the filter can
  be removed from the network (`oneprune.structured.slim`).
- Coupled filters. Channels joined by a residual addition form one dependency group, and
  `slim` removes a channel only where every layer producing it zeroes it. So with
  `example_inputs` the pruner also finds (`oneprune.structured.coupled_filters`) the
  pruned layers whose output channels a group couples, and gives each of their filters of
  one channel the same score: the root-mean-square of the live members' filter RMS values
  for that channel (sqrt of the mean of their mean squares). Every allocation then prunes
  the same channels in all coupled layers (uniform gives equal-sized ones the same counts,
  or counts one apart whose pruned sets are nested), so slim removes them. A network
  without such groups (a plain chain of convolutions) prunes exactly as with per-layer
  scores; one that cannot be traced falls back to them, with a warning.
- Where. The allocation (`oneprune.allocation`) decides how many units each layer prunes
  at each target: uniform, global (one ranking over all layers), erk, lamp, uniform_plus
  or depth. `scope="local"` / `"global"` are the older names of uniform and global.
- Counts. Exactly round(s * N) of all N units are pruned, whatever the allocation (capped
  so that every layer keeps a unit; `round_to`, below, trades that for rounded layers).
  Selection is by rank (`oneprune.ranking`): the k-th smallest score is found exactly,
  everything below it is pruned, ties at it are broken by position (layer order, then
  flat index). So counts are exact under ties and pre-existing zeros, and no
  `torch.quantile` (limited to 2^24 elements) is used.
- A layer is never emptied: at least one unit per layer survives (its best one).
- `round_to=N` (filters only): each layer keeps a multiple of N filters, at least N (what
  accelerators run fastest, e.g. 8 or 16). After the allocation chooses how many filters a
  layer keeps, that count is rounded to the nearest of N, 2N, ... up to the layer's size,
  and the size itself (ties: the larger), never below the allocation's own floor; the
  layer keeps its top-scored filters. A layer of fewer than N filters stays whole, and one
  whose size is not a multiple of N keeps a multiple of N or all of them. The total is
  then as near round(s * N) as the rounding allows, not exact: each layer keeps at most
  N/2 filters more or fewer than the allocation gave it (more only where the allocation
  left it fewer than N/2, which become N, or where it has fewer than N: up to N - 1).
  Each prune starts from what is pruned, so over a schedule the total stays within that
  bound of its target instead of adding up the deviations of the steps.
- Monotone: a pruned unit stays pruned. Pruned units rank below every live one and no
  layer's budget falls below what it has pruned, so a higher target extends the pruned
  set, and a target below the current sparsity changes nothing. Rounding to `round_to` is
  monotone too (a count already a multiple stays where it is) and never revives a filter.
- DDP: masks are a deterministic function of the weights (no randomness, position
  tie-break), and DDP keeps weights identical on every rank (same initial broadcast,
  all-reduced gradients), so every rank computes the same masks without communication.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from oneprune import _validate
from oneprune.allocation import Allocation, allocation_of, from_scope
from oneprune.ranking import smallest

if TYPE_CHECKING:
    from oneprune.structured import FilterCoupling

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


def check_round_to(key: str, value, granularity: str) -> int:
    """`value` as an int >= 1, refused (`ValueError` naming `key`) above 1 unless
    `granularity` is "filter"."""
    value = _validate.integer(key, value, low=1)
    if value > 1 and granularity != "filter":
        raise ValueError(f"{key}={value} keeps filter counts multiples of {value}, so it "
                         f"needs granularity 'filter', got {granularity!r}")
    return value


class LayerSparsity(NamedTuple):
    """One row of `Pruner.layer_report()`."""

    name: str
    weights: int
    pruned: int
    sparsity: float
    shape: tuple[int, ...]


class Pruner:
    """Prunes the weights of `model`'s layers of `layer_types` by magnitude.

    Args:
        model: the network; its prunable layers are found once, here.
        scope: the older name of `allocation`: "local" is "uniform", "global" "global".
        granularity: "weight" (unstructured) or "filter" (whole output filters).
        layer_types: module classes whose `weight` is pruned (default: `nn.Conv2d`).
        exclude: module-name patterns (`fnmatch`, e.g. "conv1" or "layer4.*") to leave
            dense; a pattern that matches no prunable layer is an error.
        allocation: how a target is spread over the layers (`oneprune.allocation`):
            "uniform" (the default), "global", "erk", "lamp", "uniform_plus", "depth", or
            an `Allocation` object.
        allocation_args: the allocation's own arguments, e.g. {"exponent": 2.0} for
            "depth" (0: uniform; > 0: deeper layers sparser).
        example_inputs: a batch the model takes; with filter granularity it lets the
            pruner find the BatchNorm channel each filter feeds, which is zeroed with it,
            and the layers whose channels a residual addition couples, which are scored
            together (see the module docstring).
        round_to: with filter granularity, keep each pruned layer's filters a multiple
            of this (e.g. 8 or 16; 1, the default, rounds nothing; see the module
            docstring for how, and how far the total may move).

    `Pruner.of(model, selection, ...)` takes the layers from a `PruneSelection`.

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

    The same budget spread by ERK: the small first layer keeps 31 of its 36 weights.

    >>> erk = Pruner(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 8, 3)), allocation="erk")
    >>> erk.prune_to(0.75)
    >>> [(row.name, row.pruned) for row in erk.layer_report()]
    [('0', 5), ('1', 238)]
    """

    def __init__(self, model: nn.Module, scope: str | None = None,
                 granularity: str = "weight",
                 layer_types: type | tuple[type, ...] = (nn.Conv2d,),
                 exclude: str | Iterable[str] = (), *,
                 allocation: str | Allocation | None = None,
                 allocation_args: Mapping[str, Any] | None = None,
                 example_inputs: torch.Tensor | None = None, round_to: int = 1):
        self.granularity = _validate.choice("granularity", granularity, GRANULARITIES)
        self.round_to = check_round_to("round_to", round_to, self.granularity)
        named = None if scope is None else from_scope(scope)
        given = getattr(allocation, "name", allocation)
        if given is not None and named is not None and given != named:
            raise ValueError(f"scope {scope!r} names allocation {named!r}, "
                             f"but allocation is {given!r}")
        self.allocation = allocation_of(allocation or named or "uniform", allocation_args,
                                        self.granularity)
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
        # Per layer, filter granularity only: the 1-D parameters zeroed with a filter (its
        # bias, the BatchNorm channel it feeds); and the sets of layers whose channels a
        # dependency group couples, scored together.
        self._followers: list[list[nn.Parameter]] = [[] for _ in self._layers]
        self._couplings: list[FilterCoupling] = []
        if self.granularity == "filter":
            from oneprune.structured import filter_structure

            self._followers, self._couplings = filter_structure(
                model, [m for _, m in self._layers], example_inputs)

    @classmethod
    def of(cls, model: nn.Module, selection: PruneSelection, scope: str | None = None,
           granularity: str = "weight", **options) -> Pruner:
        """A pruner of the layers `selection` picks in `model` (`options`: `allocation`,
        `allocation_args`, `example_inputs`, `round_to`)."""
        return cls(model, scope, granularity, layer_types=selection.layer_types,
                   exclude=selection.exclude, **options)

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

    def _all_scores(self) -> list[torch.Tensor]:
        """`_scores` of every layer, the filters of coupled layers (`self._couplings`)
        scored per channel: the root-mean-square of the live members' filter RMS there."""
        coupled = {i for coupling in self._couplings for i in coupling.members}
        scores = [None if i in coupled else self._scores(i) for i in range(len(self._layers))]
        for coupling in self._couplings:
            weights = [self._layers[i][1].weight.detach() for i in coupling.members]
            device = weights[0].device
            # Per channel: the sum of the live members' mean squares, and how many there
            # are. Scattered per member (each channel once: deterministic) and added in
            # member order, so every DDP rank computes the same scores.
            squares = torch.zeros(coupling.size, device=device)
            live = torch.zeros(coupling.size, device=device)
            for i, weight, channel in zip(coupling.members, weights, coupling.channels,
                                          strict=True):
                alive, channel = self._alive[i].to(device), channel.to(device)
                mean_square = weight.flatten(1).float().pow(2).mean(dim=1).to(device)
                squares += torch.zeros_like(squares).index_put_(
                    (channel,), torch.where(alive, mean_square, 0.0))
                live += torch.zeros_like(live).index_put_((channel,), alive.float())
            shared = (squares / live.clamp(min=1.0)).sqrt()
            for i, channel in zip(coupling.members, coupling.channels, strict=True):
                alive = self._alive[i]
                scores[i] = shared[channel.to(device)].to(alive.device).masked_fill_(
                    ~alive, -1.0)
        return scores

    def _rounded_kept(self, kept: int, units: int, least: int) -> int:
        """What a layer of `units` filters keeps when the allocation gives it `kept` (at
        least `least`): the nearest of the multiples of `round_to` from max(least,
        round_to) up to `units`, and `units` itself; ties to the larger."""
        step = self.round_to
        first = -(-max(least, step) // step) * step
        return min([*range(first, units + 1, step), units], key=lambda c: (abs(c - kept), -c))

    # -- pruning --------------------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """Names (as in `model.named_modules()`) of the layers this pruner prunes."""
        return [name for name, _ in self._layers]

    def _units(self) -> list[int]:
        return [alive.numel() for alive in self._alive]

    def check_reachable(self, sparsity: float) -> None:
        """Raise `ValueError` if the allocation cannot prune `sparsity` of the units (only
        one that keeps more than one unit of a layer can fail: `uniform_plus`)."""
        sparsity = _validate.real("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        self.allocation.check_reachable(
            sparsity, self._units(), self.layer_names,
            "filters" if self.granularity == "filter" else "weights")

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Prune to `sparsity` in [0, 1) of the units (see the module docstring's rules)
        and zero the pruned weights at once."""
        self.check_reachable(sparsity)
        self._follow_weights()
        units = self._units()
        pruned = [n - int(torch.count_nonzero(alive))
                  for n, alive in zip(units, self._alive, strict=True)]
        total = min(round(sparsity * sum(units)), sum(self.allocation.most_pruned(units)))
        if total > sum(pruned):
            scores = self._all_scores()
            selected = self.allocation.select(
                scores, [m.weight.shape for _, m in self._layers], total, pruned)
            least, _ = self.allocation.kept_bounds(units)
            for i, layer_selected in enumerate(selected):
                if layer_selected is None:
                    continue
                if self.round_to > 1:  # the nearest allowed count, its top-scored filters
                    kept = units[i] - int(torch.count_nonzero(layer_selected))
                    kept = min(self._rounded_kept(kept, units[i], least[i]),
                               units[i] - pruned[i])  # never revive (a loaded mask)
                    if units[i] - kept <= pruned[i]:
                        continue
                    layer_selected = smallest(scores[i], units[i] - kept)
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
        for alive, followers in zip(self._alive, self._followers, strict=True):
            for parameter in followers:  # a pruned filter's bias and BatchNorm channel
                mask = alive.to(parameter.device, parameter.dtype)
                for tensor in (parameter, parameter.grad):
                    if tensor is not None:
                        tensors.append(tensor)
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
            rows.append(LayerSparsity(name, weights, pruned, pruned / weights,
                                      tuple(module.weight.shape)))
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
        return (f"Pruner(allocation={self.allocation.name!r}, granularity={self.granularity!r}, "
                f"layers={len(self._layers)}, sparsity={self.sparsity():.4f})")
