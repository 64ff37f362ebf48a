"""``bnas eval``: top-1, top-5 and loss of saved weights on a validation set."""
from __future__ import annotations

import argparse
import json
import os

from ..train.options import add_config_options, overrides_from_args
from . import command_parser

#: The settings ``bnas eval`` takes (the model's default to those the weights were trained with).
EVAL_FIELDS = ("arch", "config", "layers", "init_channels", "num_classes", "binarizer",
               "binarizer_hparams", "layer_overrides", "dataset", "data", "data_recipe",
               "image_size", "loader", "workers", "val_subset", "batch_size", "eval_batch_size",
               "device", "amp", "channels_last", "seed")

EPILOG = """\
examples:
  bnas eval --weights runs/train-bnas-a-20250101-120000/best.pt --data ./data
  bnas eval --arch latest_cell --config bnas-d --weights best.pt --data /data/imagenet
  bnas eval --weights runs/train-bnas-a-20250101-120000/best.pt --packed --data ./data
  bnas eval --weights bnas-a.bnx --packed --data ./data
  torchrun --nproc_per_node 8 -m bnas eval --weights best.pt --data /data/imagenet
"""


DESCRIPTION = """\
Print top-1, top-5 and cross-entropy of a best.pt, checkpoint.pt or (--packed) .bnx file.
Architecture, size, binarizer and dataset default to those the weights were trained with;
weights of another architecture are refused.
"""


def add_parser(subparsers) -> None:
    p = command_parser(
        subparsers, "eval", run, help="evaluate saved weights on a validation set",
        description=DESCRIPTION,
        epilog=EPILOG)
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="best.pt, checkpoint.pt or (with --packed) a .bnx file from bnas export")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--packed", action="store_true",
                   help="run the binary operations on the bit-packed CPU engine (bnas.deploy)")
    add_config_options(p, EVAL_FIELDS, title="settings")


def run(args: argparse.Namespace) -> int:
    from ..train import resolve_config
    from ..deploy.source import is_packed_file
    from ..errors import BnasError
    from ..train.engine import evaluate, packed_settings, weights_settings

    preset, overrides = overrides_from_args(args, EVAL_FIELDS)
    if is_packed_file(args.weights):
        if not args.packed:
            raise BnasError(f"{args.weights} is a packed model: evaluate it with --packed")
        settings = packed_settings(args.weights, overrides)
    else:
        settings = weights_settings(args.weights, overrides)
    overrides = {**overrides, **settings, "progress": False}
    result = evaluate(resolve_config(preset, overrides), args.weights, packed=args.packed)
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss "
                  f"{result['loss']:.4f}  ({result['samples']} images)")
    return 0
