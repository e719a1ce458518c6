"""The first forward pass a model class makes inside code that builds the model itself."""

import contextlib

from torch import nn


@contextlib.contextmanager
def first_forward(model_class):
    """Within the block, record the input and output of the first forward pass of any
    `model_class` module (a global forward hook): yields the list it fills."""
    seen = []

    def hook(module, args, output):
        if isinstance(module, model_class) and not seen:
            seen.append((args[0].detach().clone(), output.detach().clone()))

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
