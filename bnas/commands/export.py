"""``bnas export``: trained weights to a packed ``.bnx`` model for the bit-packed CPU engine."""
from __future__ import annotations

import argparse

from ..train.options import add_config_options, overrides_from_args

EPILOG = """\
examples:
  bnas export --weights runs/train-bnas-a-20250101-120000/best.pt --out bnas-a.bnx
  bnas bench --weights bnas-a.bnx
  bnas eval --weights runs/train-bnas-a-20250101-120000/best.pt --packed --data ./data
"""


def add_parser(subparsers) -> None:
    from ..deploy.source import MODEL_FIELDS

    p = subparsers.add_parser(
        "export", help="pack trained weights into a .bnx file for the bit-packed CPU engine",
        description="Write a versioned .bnx file: every binary weight packed to one bit with its "
                    "per-output-channel scale, BatchNorms and real-valued layers as they are. "
                    "bnas.deploy.load() runs it with XNOR/popcount kernels, equal to the float "
                    "model. Architecture, size and binarizer default to those the weights were "
                    "trained with.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, metavar="FILE", help="best.pt or checkpoint.pt")
    p.add_argument("--out", required=True, metavar="FILE", help="the .bnx file to write")
    add_config_options(p, MODEL_FIELDS, title="settings")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy import pack, save
    from ..deploy.bench import sizes
    from ..deploy.kernels import describe
    from ..deploy.source import MODEL_FIELDS, trained_model

    preset, overrides = overrides_from_args(args, MODEL_FIELDS)
    packed = pack(trained_model(args.weights, preset, overrides))
    path = save(packed, args.out)
    size = sizes(packed, path)
    print(f"wrote {path}: {size['file_bytes'] / 1e6:.2f} MB; binary weights "
          f"{size['binary_bytes'] / 1e6:.3f} MB packed vs {size['binary_float_bytes'] / 1e6:.2f} "
          f"MB in float32 ({size['binary_float_bytes'] / max(size['binary_bytes'], 1):.1f}x); "
          f"engine: {describe()}")
    return 0
