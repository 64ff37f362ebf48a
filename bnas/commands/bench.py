"""``bnas bench``: latency of the bit-packed CPU engine next to float32 PyTorch (and
onnxruntime when installed): batch 1 and 32, one thread and all, throughput, peak memory and a
per-layer table."""
from __future__ import annotations

import argparse
import json
import math

from ..train.options import add_config_options, overrides_from_args
from . import command_parser

EPILOG = """\
examples:
  bnas bench resnet18_1w1a --dataset imagenet
  bnas bench --config bnas-a
  bnas bench --weights runs/train-bnas-a-20250101-120000/best.pt --json
  bnas bench --weights bnas-a.bnx
  bnas bench --table space=bnas dataset=cifar10 layers=20 init_channels=36 threads=1
  bnas bench --table space=bnas-skip dataset=digits layers=8 init_channels=16 --regenerate

--table measures the per-operation latency table of bnas search --cost latency (every operation
of the space at every shape of the network of that size; defaults: space=bnas dataset=cifar10,
the builder's size for the dataset, steps=4 binarizer=plain, torch's threads). Tables are kept
per CPU model and thread count under ~/.cache/bnas/latency; entries already there are reused
unless --regenerate.
"""


DESCRIPTION = """\
Latency (ms) at each batch size with one thread and with all of torch's threads, throughput,
peak memory and per-layer times of the packed engine and of the same model in float32 PyTorch
(eval mode), plus onnxruntime when bnas.deploy.onnx and onnxruntime are installed. Give an
architecture (fresh weights: timing does not depend on them), trained weights or a .bnx file.
"""


def add_parser(subparsers) -> None:
    from ..deploy.source import MODEL_FIELDS

    p = command_parser(
        subparsers, "bench", run, help="time the bit-packed CPU engine against float32 PyTorch",
        description=DESCRIPTION,
        epilog=EPILOG)
    p.add_argument("model", nargs="?", metavar="ARCH", help="genotype name or file")
    p.add_argument("--weights", metavar="FILE", help="best.pt, checkpoint.pt or a .bnx file")
    p.add_argument("--batches", default="1,32", metavar="B,B", help="batch sizes (default 1,32)")
    p.add_argument("--min-time", type=float, default=0.5, metavar="S",
                   help="seconds each latency is measured for at least (default 0.5)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--table", nargs="+", metavar="KEY=VALUE",
                   help="measure the latency table of a --cost latency search instead (see below)")
    p.add_argument("--regenerate", action="store_true",
                   help="--table: measure every entry afresh")
    add_config_options(p, tuple(f for f in MODEL_FIELDS if f != "arch"), title="model")


def _models(args: argparse.Namespace):
    from ..deploy import fileio, pack
    from ..deploy.source import MODEL_FIELDS, is_packed_file, trained_model
    from ..errors import BnasError
    from ..model import build_model

    if (args.model is None) == (args.weights is None):
        raise BnasError("give an architecture or --weights (one of them)")
    preset, overrides = overrides_from_args(args, MODEL_FIELDS)
    if args.weights is not None and is_packed_file(args.weights):
        packed = fileio.load(args.weights)
        return fileio.float_model(packed.deploy_identity).eval(), packed
    if args.weights is not None:
        model = trained_model(args.weights, preset, overrides)
    else:
        given = {k: v for k, v in overrides.items() if v is not None}
        hparams = given.pop("binarizer_hparams", None) or {}
        model = build_model(args.model, **given, **hparams).eval()
    return model, pack(model)


def run(args: argparse.Namespace) -> int:
    from ..deploy.bench import bench
    from ..deploy.source import input_size
    from ..errors import BnasError

    if args.table is not None:
        if args.model is not None or args.weights is not None:
            raise BnasError("--table measures operations, not a model: drop the architecture "
                            "and --weights")
        return _table(args)
    if args.regenerate:
        raise BnasError("--regenerate goes with --table")
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        raise BnasError(f"--batches: expected sizes like 1,32, got {args.batches!r}") from None
    if not batches or min(batches) < 1:
        raise BnasError(f"--batches: expected positive sizes, got {args.batches!r}")
    if not 0 <= args.min_time < math.inf:  # also refuses nan
        raise BnasError(f"--min-time: expected seconds >= 0, got {args.min_time}")
    model, packed = _models(args)
    result = bench(model, packed, input_size(model), batches,
                   min_time=args.min_time)
    result["model"] = model.genotype.name
    print(json.dumps(result) if args.json else report(result))
    return 0


def _table(args: argparse.Namespace) -> int:
    """``--table``: build (or complete) the latency table and print it."""
    from ..search.latency import table_for

    table, settings = table_for(args.table, args.regenerate)
    if args.json:
        print(json.dumps({"path": str(table.path), **settings, "entries": table.entries}))
        return 0
    print(f"latency table {table.path} ({len(table.entries)} entries; seconds through the packed "
          f"engine, batch 1, {settings['threads']} thread(s)) for {settings['space']} at "
          f"{settings['layers']} cells, C={settings['init_channels']}, "
          f"{settings['image_size']}x{settings['image_size']} ({settings['dataset']}):")
    for key, seconds in sorted(table.entries.items()):
        print(f"  {key:48} {seconds * 1e3:9.3f} ms")
    return 0


def report(r: dict) -> str:
    """The human-readable table of a :func:`bnas.deploy.bench.bench` result."""
    cols = [f"{b}x{n}" for b in r["batches"] for n in r["threads"]]
    lines = [f"{r['model']} at {r['image_size']}x{r['image_size']} on {r['cpu']}; packed engine: "
             f"{r['engine']}",
             "latency (ms)        " + "".join(f"{f'batch {c.split(chr(120))[0]}, {c.split(chr(120))[1]} thr':>18}"
                                             for c in cols)]
    base = r["latency_ms"]["pytorch"]
    for name, lat in r["latency_ms"].items():
        lines.append(f"{name:20}" + "".join(f"{lat[c]:18.3f}" if c in lat else f"{'-':>18}"
                                            for c in cols))
    lines.append(f"{'packed speed-up':20}" + "".join(
        f"{base[c] / r['latency_ms']['packed'][c]:17.2f}x" for c in cols))
    lines.append("throughput (img/s, batch {}, all threads): ".format(max(r["batches"])) + ", ".join(
        f"{k} {v:.1f}" for k, v in r["throughput"].items()))
    lines.append(f"peak working memory at batch {max(r['batches'])} (MB above the loaded model, "
                 f"fresh process): " + ", ".join(
        f"{k} {v:.1f}" for k, v in r["peak_memory_mb"].items() if v is not None))
    lines.append("model (MB): " + ", ".join(f"{k} {v:.2f}" for k, v in r["model_mb"].items()))
    split = r["packed_split_ms"]
    lines.append("packed engine at batch 1: " + ", ".join(f"{k} {v:.3f} ms"
                                                          for k, v in split.items()))
    lines += [f"note: {n}" for n in r["notes"]]
    lines.append(f"{'layer':40} {'kind':24} {'pytorch ms':>11} {'packed ms':>10} {'speed-up':>9}")
    for row in r["layers"]:
        ratio = row["pytorch_ms"] / row["packed_ms"] if row["packed_ms"] else float("nan")
        lines.append(f"{row['name']:40} {row['kind']:24} {row['pytorch_ms']:11.3f} "
                     f"{row['packed_ms']:10.3f} {ratio:8.2f}x")
    return "\n".join(lines)
