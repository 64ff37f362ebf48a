"""``bnas export``: trained weights to a packed ``.bnx`` model for the bit-packed CPU engine, or
to ONNX (the float model in standard operators, checked in onnxruntime)."""
from __future__ import annotations

import argparse

from ..train.options import add_config_options, overrides_from_args
from . import command_parser

EPILOG = """\
examples:
  bnas export --weights runs/train-bnas-a-20250101-120000/best.pt --out bnas-a.bnx
  bnas export --weights runs/train-bnas-a-20250101-120000/best.pt --out bnas-a.onnx
  bnas bench --weights bnas-a.bnx
  bnas eval --weights runs/train-bnas-a-20250101-120000/best.pt --packed --data ./data
"""


def add_parser(subparsers) -> None:
    from ..deploy.onnx import DEFAULT_OPSET
    from ..deploy.source import MODEL_FIELDS

    p = command_parser(
        subparsers, "export", run, help="pack trained weights into a .bnx file for the bit-packed CPU engine, or "
                       "write the float model to ONNX",
        description="Write a versioned .bnx file: every binary weight packed to one bit with its "
                    "per-output-channel scale, BatchNorms and real-valued layers as they are. "
                    "bnas.deploy.load() runs it with XNOR/popcount kernels, equal to the float "
                    "model. Or (--format onnx) write the eval-mode float model to ONNX in "
                    "standard operators and check it in onnxruntime against PyTorch. "
                    "Architecture, size and binarizer default to those the weights were "
                    "trained with.",
        epilog=EPILOG)
    p.add_argument("--weights", required=True, metavar="FILE", help="best.pt or checkpoint.pt")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--format", choices=sorted(FORMATS),
                   help="bnx (the packed engine's file) or onnx (the float model in standard "
                        "operators, checked against PyTorch in onnxruntime; needs the onnx "
                        "extra); default: onnx when --out ends in .onnx, else bnx")
    p.add_argument("--opset", type=int, metavar="N",
                   help=f"ONNX operator set (default {DEFAULT_OPSET}; --format onnx only)")
    add_config_options(p, MODEL_FIELDS, title="settings")


def export_bnx(model, args: argparse.Namespace) -> str:
    from ..deploy import pack, save
    from ..deploy.bench import sizes
    from ..deploy.kernels import describe

    packed = pack(model)
    path = save(packed, args.out)
    size = sizes(packed, path)
    return (f"wrote {path}: {size['file_bytes'] / 1e6:.2f} MB; binary weights "
            f"{size['binary_bytes'] / 1e6:.3f} MB packed vs "
            f"{size['binary_float_bytes'] / 1e6:.2f} MB in float32 "
            f"({size['binary_float_bytes'] / max(size['binary_bytes'], 1):.1f}x); "
            f"engine: {describe()}")


def export_onnx(model, args: argparse.Namespace) -> str:
    import torch

    from ..deploy.onnx import DEFAULT_OPSET, compare_onnx, export_onnx
    from ..deploy.source import input_size

    size = input_size(model)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    path = export_onnx(model, args.out, (1, 3, size, size), opset=opset)
    check = compare_onnx(model, path, torch.randn(8, 3, size, size,
                                                  generator=torch.Generator().manual_seed(0)))
    return (f"wrote {path}: {path.stat().st_size / 1e6:.2f} MB, ONNX opset {opset}, input "
            f"(N, 3, {size}, {size}); onnxruntime vs PyTorch on 8 random inputs: max abs "
            f"difference {check.max_abs_diff:.3g} (largest output {check.max_abs_output:.3g}), "
            f"top-1 agreement {check.top1_agreement:.0%}")


#: Output formats: the function that writes the model and returns the line to print.
FORMATS = {"bnx": export_bnx, "onnx": export_onnx}


def run(args: argparse.Namespace) -> int:
    from ..deploy.source import MODEL_FIELDS, trained_model

    from ..errors import BnasError

    fmt = args.format or ("onnx" if str(args.out).lower().endswith(".onnx") else "bnx")
    if args.opset is not None and fmt != "onnx":
        raise BnasError("--opset applies to --format onnx only")
    preset, overrides = overrides_from_args(args, MODEL_FIELDS)
    print(FORMATS[fmt](trained_model(args.weights, preset, overrides), args))
    return 0
