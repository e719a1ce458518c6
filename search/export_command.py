"""`oneprune-export SOURCE --out DIR [--slim] [--onnx]`: a pruned model as files to deploy.

SOURCE is a folder `python -m oneprune --out` (or `oneprune.export.save_pruned`)
wrote, or an MLflow model URI of a study's model (`models:/quick.one_cycle@best`, read from
`--tracking-uri`). Writes to DIR:

- `model.pt2`: the model as a torch.export program that takes images in [0, 1] (N x C x H
  x W, ToTensor's) with the normalisation inside; `torch.export.load(path).module()` runs
  it with torch alone. With `--slim`, its zeroed filters are removed (exactly, or the
  command says why not);
- `model.onnx` with `--onnx` (input `images`, output `logits`, dynamic batch), checked
  against torch with onnxruntime when it is installed;
- `layers.csv`: per conv / linear layer, its shape, sparsity, filters masked and removed.

Bad input (a URI that does not exist, a folder that is not a saved model, a model that
cannot be exported) gets one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from oneprune.cli import OneLineParser
from oneprune.deploy import LAYERS_FILE, Deployable, save_layers, save_onnx, save_program
from oneprune.saving import deployable_of, load_pruned
from search.experiment.schema import DEFAULT_TRACKING_URI
from search.tracking.downloads import saved_folder


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="oneprune-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a folder written by python -m oneprune --out, "
                                       "or a models:/ URI")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument("--slim", action="store_true",
                        help="remove the zeroed filters (filter pruning)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI",
                                                                  DEFAULT_TRACKING_URI),
                        help="MLflow tracking URI of a models:/ source (default: "
                             "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    return parser


def _onnx_agreement(ready: Deployable, path: Path) -> str:
    """How closely onnxruntime's logits follow torch's on a batch of random images."""
    try:
        import onnxruntime
    except ImportError:
        return "not checked: onnxruntime is not installed"
    images = torch.rand(8, *ready.image_shape)
    with torch.no_grad():
        expected = ready.module(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    same = int((got.argmax(1) == expected.argmax(1)).sum())
    return (f"onnxruntime agrees with torch: {same}/8 predictions, max |logit difference| "
            f"{float(np.abs(got - expected).max()):.2g}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if os.getcwd() not in sys.path:  # a model module in the working folder, as `python -m`
        sys.path.append(os.getcwd())
    try:
        with saved_folder(args.source, args.tracking_uri) as folder:
            ready = deployable_of(load_pruned(folder), slim=args.slim)
        args.out.mkdir(parents=True, exist_ok=True)
        written = [save_program(ready, args.out / "model.pt2")]
        if args.onnx:
            written.append(save_onnx(ready, args.out / "model.onnx"))
        save_layers(ready, args.out / LAYERS_FILE)
    except (ValueError, OSError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    counts = ready.footprint
    removed = sum(row["filters_removed"] for row in ready.layers)
    print(f"{args.source}: {counts['parameters']:,} parameters "
          f"({counts['parameter_bytes']:,} bytes), {counts['nonzero_weights']:,} non-zero "
          f"weights, {counts['macs_per_image']:,} multiply-adds per image"
          + (f"; {removed:,} filters removed" if args.slim else ""))
    for path in written:
        print(f"{path} ({path.stat().st_size:,} bytes)")
    if args.onnx:
        print(_onnx_agreement(ready, args.out / "model.onnx"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
