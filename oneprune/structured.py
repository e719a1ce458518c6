"""Filter pruning made physical: what a pruned filter zeroes besides its weights, and the
smaller network without the zeroed channels. Both read the network's dependency graph
from Torch-Pruning (`torch_pruning.DependencyGraph`, traced through autograd), so they work
for users' own modules, not only for the built-in ones.

Why the BatchNorm channel is zeroed with its filter: a zeroed filter followed by
BatchNorm outputs BN's shift, a per-channel constant, not zero; with zero padding the next
convolution's response to a constant channel is not constant at the image borders, so it
cannot be folded into a bias, and removing the channel would change the network. Zeroing
the filter's bias and BN's weight and bias with it (`filter_structure` finds them, the
`Pruner` applies at every step) makes the channel exactly zero, so removing it is exact.

Channels joined by a residual addition or a concatenation form one dependency group: a
channel can only be removed where every layer of its group that produces it outputs zero
there. `slim` removes exactly those, keeps the rest as zeros, and checks that the slim
network computes what the masked one does. `coupled_filters` finds, per group, the pruned
layers that produce its channels, so that the `Pruner` gives their filters of one channel
one score and prunes the same channels in all of them.
"""

from __future__ import annotations

import copy
import warnings
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # layers with output filters
PRODUCERS = (*LAYERS, _BatchNorm)  # what can make a channel exactly zero


class SlimLayer(NamedTuple):
    """One conv or linear layer before and after `slim`: its weight's shape, how many of its
    output filters are zero (masked) and how many were removed."""

    name: str
    shape: tuple[int, ...]
    slim_shape: tuple[int, ...]
    filters: int
    filters_masked: int
    filters_removed: int


def _dependency_graph(model: nn.Module, example_inputs: torch.Tensor):
    """Torch-Pruning's dependency graph of `model`, traced in eval mode (BatchNorm's running
    statistics untouched) without consuming random numbers."""
    import torch_pruning

    modes = {module: module.training for module in model.modules()}
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            model.eval()
            output = model(example_inputs)
            if not isinstance(output, torch.Tensor) or output.grad_fn is None:
                raise RuntimeError("its output is not computed through autograd")
            return torch_pruning.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, verbose=False)
    finally:
        for module, training in modes.items():
            module.training = training


def evaluated(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """`model(inputs)` in eval mode, leaving the model's modes as they were."""
    modes = {module: module.training for module in model.modules()}
    try:
        return model.eval()(inputs)
    finally:
        for module, training in modes.items():
            module.training = training


class FilterCoupling(NamedTuple):
    """Pruned layers whose output channels one dependency group couples (a residual
    addition, a concatenation feeding one): `members` are their positions in the list of
    layers `filter_structure` was given, and `channels` per member the group channel each
    of its filters produces (filter f of member m is channel `channels[m][f]`, of `size`).
    A channel can only be removed where every member zeroes its filter of it."""

    size: int
    members: tuple[int, ...]
    channels: tuple[torch.Tensor, ...]


def filter_structure(model: nn.Module, layers: list[nn.Module],
                     example_inputs: torch.Tensor | None
                     ) -> tuple[list[list[nn.Parameter]], list[FilterCoupling]]:
    """From one trace of `model` on `example_inputs`: per layer of `layers`, the 1-D
    parameters whose entry i must be zeroed with its filter i so that channel i is exactly
    zero (its own bias, and the weight and bias of a BatchNorm that reads its output
    directly), and the `coupled_filters` of `layers`. Without `example_inputs`, or when the
    model cannot be traced, only the layers' own biases and no layers coupled (with a
    warning where tracing failed)."""
    own = [[layer.bias] if isinstance(getattr(layer, "bias", None), nn.Parameter) else []
           for layer in layers]
    if example_inputs is None:
        return own, []
    try:
        graph = _dependency_graph(model, example_inputs)
        followers = [list(mine) for mine in own]
        for layer, mine in zip(layers, followers, strict=True):
            node = graph.module2node.get(layer)
            for output in node.outputs if node is not None else ():
                norm = output.module
                if isinstance(norm, _BatchNorm) and norm.affine:
                    mine += [norm.weight, norm.bias]
        couplings = coupled_filters(graph, layers)
    except Exception as error:  # tracing a user's model can fail in many ways
        warnings.warn(f"filter pruning: cannot trace {type(model).__name__} to find the "
                      f"BatchNorm channel each filter feeds ({type(error).__name__}: "
                      f"{error}); pruned filters keep BatchNorm's shift, so they cannot be "
                      f"removed from the network, and each layer ranks its filters alone",
                      stacklevel=3)
        return own, []
    return followers, couplings


def coupled_filters(graph, layers: list[nn.Module]) -> list[FilterCoupling]:
    """The sets of `layers` (two or more each) whose output channels a dependency group of
    Torch-Pruning's `graph` (`_dependency_graph`) couples: the layers that produce the
    group's channels (out-channel pruning), each with the group channel each of its filters
    is. Only a conv or linear layer all of whose filters the group holds, each once, is a
    member (its filters are the slices along dim 0 of its weight); a layer is in one set at
    most."""
    position = {layer: i for i, layer in enumerate(layers)}
    claimed: set[int] = set()
    couplings = []
    for group in graph.get_all_groups(root_module_types=LAYERS):
        members, channels = [], []
        for item in group:
            i = position.get(item.dep.target.module)
            if (i is None or i in claimed or not isinstance(layers[i], LAYERS)
                    or not graph.is_out_channel_pruning_fn(item.dep.handler)):
                continue
            filters = layers[i].weight.shape[0]
            idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
            roots = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
            if (idxs.numel() != filters or roots.numel() != filters
                    or not torch.equal(idxs.sort().values, torch.arange(filters))
                    or roots.unique().numel() != filters or int(roots.min()) < 0):
                continue  # not all its filters, or not one channel each
            channel = torch.empty(filters, dtype=torch.long)
            channel[idxs] = roots
            members.append(i)
            channels.append(channel)
            claimed.add(i)
        if len(members) > 1:
            size = max(int(channel.max()) for channel in channels) + 1
            couplings.append(FilterCoupling(size, tuple(members), tuple(channels)))
        else:
            claimed.difference_update(members)
    return couplings


def _zero_outputs(module: nn.Module, idxs: list[int]) -> torch.Tensor:
    """Per channel of `idxs`: does `module` output exactly 0 there whatever its input (a
    zero filter and bias, a BatchNorm channel of zero weight and bias)? False for any
    other kind of module with parameters, which `slim` does not reason about."""
    index = torch.as_tensor(idxs, dtype=torch.long)
    if isinstance(module, _BatchNorm):
        if not module.affine:
            return torch.zeros(len(idxs), dtype=torch.bool)
        return (module.weight.detach()[index] == 0) & (module.bias.detach()[index] == 0)
    if isinstance(module, PRODUCERS):
        zero = (module.weight.detach()[index].flatten(1) == 0).all(dim=1)
        if module.bias is not None:
            zero &= module.bias.detach()[index] == 0
        return zero
    return torch.zeros(len(idxs), dtype=torch.bool)


def _reaches_the_output(item, graph) -> bool:
    """Whether a group item carries its channels to the network's outputs: the output
    itself, or an output channel that nothing traced reads further."""
    import torch_pruning

    node = item.dep.target
    return node.type == torch_pruning.ops.OPTYPE.OUTPUT or (
        graph.is_out_channel_pruning_fn(item.dep.handler) and not node.outputs)


def slim(model: nn.Module, example_inputs: torch.Tensor, *, tolerance: float = 1e-4
         ) -> tuple[nn.Module, list[SlimLayer]]:
    """A copy of `model` (eval mode) without the channels that every layer producing them
    zeroes, and a row per conv / linear layer. `ValueError` when the model cannot be
    traced, or when the slim copy's outputs on `example_inputs` differ from the model's by
    more than `tolerance` (absolute and relative): the model then has to stay masked."""
    original = {row.name: row for row in layer_rows(model)}
    slimmed = copy.deepcopy(model).eval()
    try:
        graph = _dependency_graph(slimmed, example_inputs)
        lost = [name for name, module in slimmed.named_modules()
                if name in original and original[name].filters_masked
                and module not in graph.module2node]
        if lost:
            raise RuntimeError(f"layer {lost[0]!r} is not in the graph it traced")
        plans = []
        for group in graph.get_all_groups(root_module_types=LAYERS):
            if any(_reaches_the_output(item, graph) for item in group):
                continue  # these channels are the network's outputs
            removable = set(group[0].root_idxs)
            for item in group:
                module = item.dep.target.module
                if not graph.is_out_channel_pruning_fn(item.dep.handler) or not any(
                        True for _ in getattr(module, "parameters", list)()):
                    continue  # a consumer, or an operation without parameters (add, cat)
                for root, zero in zip(item.root_idxs, _zero_outputs(module, item.idxs),
                                      strict=True):
                    if not zero:
                        removable.discard(root)
            if len(removable) == len(group[0].root_idxs):
                removable.discard(min(removable))  # a group keeps one channel
            if removable:
                plans.append((group[0].dep.target.module, group[0].dep.handler,
                              sorted(removable)))
        for module, handler, idxs in plans:
            graph.get_pruning_group(module, handler, idxs).prune(record_history=False)
    except Exception as error:  # tracing or pruning a user's model can fail in many ways
        raise ValueError(f"cannot remove the pruned filters of {type(model).__name__}: "
                         f"Torch-Pruning cannot trace it ({type(error).__name__}: "
                         f"{error})") from None
    with torch.no_grad():
        expected = evaluated(model, example_inputs)
        try:
            got = slimmed(example_inputs)
        except Exception as error:  # e.g. an index into the channels, fixed in the code
            raise ValueError(f"removing the zeroed filters of {type(model).__name__} broke "
                             f"its forward pass ({type(error).__name__}: {error}); it stays "
                             f"masked") from None
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tolerance,
                                                         atol=tolerance):
        change = ("its output shape" if got.shape != expected.shape else
                  f"its outputs by up to {float((got - expected).abs().max()):.3g}")
        raise ValueError(f"removing the zeroed filters of {type(model).__name__} changed "
                         f"{change}; it stays masked")
    rows = [original[name]._replace(slim_shape=tuple(module.weight.shape),
                                    filters_removed=original[name].filters
                                    - module.weight.shape[0])
            for name, module in slimmed.named_modules() if name in original]
    return slimmed, rows


def layer_rows(model: nn.Module) -> list[SlimLayer]:
    """A row per conv / linear layer of `model` as it is: its zero filters (weight and bias)
    counted as masked, none removed."""
    return [SlimLayer(name, tuple(module.weight.shape), tuple(module.weight.shape),
                      module.weight.shape[0],
                      int(_zero_outputs(module, list(range(module.weight.shape[0]))).sum()), 0)
            for name, module in model.named_modules() if isinstance(module, LAYERS)]
