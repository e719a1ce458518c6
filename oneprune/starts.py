"""Where a run starts: random weights (`scratch`), or weights it is given.

People who prune almost always have a trained network. A run's `TrainConfig.init` says
where its weights come from: `"scratch"` (the model's own initialisation, from the seed)
or weights read from a file by `read_weights`:

- a PyTorch `state_dict` saved with `torch.save(model.state_dict(), "model.pt")` (read with
  `weights_only=True`: loading runs no pickled code);
- a `.safetensors` file;
- a folder this project saved (`oneprune.saving.save_pruned`, `python -m oneprune --out`).

`fit_weights` loads them into the model built for the data, after checking that every
tensor fits (one line naming the first that does not: missing, unexpected, another shape,
not a tensor), so a wrong file is refused before anything trains. `weights_digest` names
what a run started from (recorded on every run of a study). `write_weights` stores them
as safetensors (the service ships a study's starting points that way).

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 3)
    >>> fit_weights(nn.Linear(2, 3), model.state_dict(), "w.pt")
    >>> fit_weights(nn.Linear(2, 4), model.state_dict(), "w.pt")
    Traceback (most recent call last):
    ...
    ValueError: w.pt does not fit the model: tensor 'weight' has shape (3, 2), the model's (4, 2)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from oneprune._files import write_atomically
from oneprune._validate import first_line
from oneprune.saving import CONFIG_FILE, MODEL_FILE, SPARSE_FILE, from_sparse

SCRATCH = "scratch"


def read_weights(source: str | os.PathLike, role: str = "init") -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file (`.pt`, `.pth`, ...), a `.safetensors` file or a
    folder this project saved; `ValueError` (one line, naming the `role` of the weights:
    init, teacher) when there is none or it holds something other than named tensors."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ValueError(f"{role} {str(source)!r} is a folder but not one this project saved "
                             f"(it has no {CONFIG_FILE})")
        sparse = path / SPARSE_FILE
        state = _torch_file(sparse if sparse.is_file() else path / MODEL_FILE, source, role)
        if sparse.is_file():
            try:
                state = from_sparse(state)
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{role} {str(source)!r}: {SPARSE_FILE} is broken "
                                 f"({first_line(error)})") from None
    elif not path.is_file():
        raise ValueError(f"{role} {str(source)!r}: no such file or folder")
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{role} {str(source)!r} is not a safetensors file "
                             f"({first_line(error)})") from None
    else:
        state = _torch_file(path, source, role)
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{role} {str(source)!r} holds no state_dict (a mapping of tensor "
                         f"names to tensors), got {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{role} {str(source)!r} is not a state_dict: its entry {name!r} "
                             f"is a {type(tensor).__name__}, not a tensor")
    return dict(state)


def _torch_file(path: Path, source, role: str) -> object:
    try:
        with warnings.catch_warnings():  # torch's notes on the pickle protocol: not ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as error:
        reason = first_line(error).split(". ")[0]  # torch's advice after it is not for here
        raise ValueError(f"{role} {str(source)!r} is not a weights file torch.load reads "
                         f"with weights_only=True ({reason})") from None


def fit_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model` (in place) once every tensor fits; `ValueError` naming the
    first that does not (`source` says where the weights came from)."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise ValueError(f"{source} does not fit the model: it has no tensor {name!r}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{source} does not fit the model: tensor {name!r} has shape "
                             f"{tuple(state[name].shape)}, the model's "
                             f"{tuple(tensor.shape)}")
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise ValueError(f"{source} does not fit the model: it has a tensor {unexpected[0]!r} "
                         f"the model does not")
    with torch.no_grad():
        model.load_state_dict(state)


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors (names, dtypes, shapes and values, in name order): what a
    run started from, comparable across runs and resumes."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def write_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Store `state` as a safetensors file, atomically (a reader never sees half a file)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = save({name: tensor.detach().cpu().contiguous() for name, tensor in state.items()})
    write_atomically(path, lambda f: f.write(blob))
    return path
