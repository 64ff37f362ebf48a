"""``bnas import``: convert a released checkpoint of BNAS, RBNN, ReCU or SiMaN into a bnas
weights file."""
from __future__ import annotations

import argparse
from . import command_parser

EPILOG = """\
examples:
  bnas import --from rbnn resnet20_1w1a.pth.tar --arch resnet20_1w1a --out rbnn-r20.pt
  bnas import --from recu model_best.pth.tar --arch recu_resnet20_1w1a --out recu-r20.pt
  bnas import --from siman model_best.pth.tar --arch siman_resnet18_1w1a --dataset imagenet \\
      --out siman-r18.pt
  bnas import --from bnas weights.pt --config bnas-a --out bnas-a.pt
  bnas eval --weights rbnn-r20.pt --data ./data
"""


DESCRIPTION = """\
Read a checkpoint saved by one of the seed projects (a state dict, a dictionary holding one
under 'state_dict', with or without DataParallel's 'module.' prefix; tensors only), map every
tensor onto the bnas network --arch with shape checks, and write a weights file that bnas eval,
bnas train --init-weights and bnas export take. Tensors the project's network never uses are
dropped and tensors it never saves keep bnas's values; both are listed.
"""


def add_parser(subparsers) -> None:
    from ..interop.sources import SOURCES

    p = command_parser(
        subparsers, "import", run, help="convert another project's released checkpoint into bnas weights",
        description=DESCRIPTION,
        epilog=EPILOG)
    p.add_argument("file", metavar="FILE", help="the project's checkpoint (.pth, .pth.tar, .pt)")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES.names(),
                   help="the project that saved FILE")
    p.add_argument("--arch", help="the bnas genotype of the network (bnas list architectures)")
    p.add_argument("--dataset", help="dataset the weights were trained on (default cifar10)")
    p.add_argument("--num-classes", type=int, help="classes (default: the dataset's)")
    p.add_argument("--config", help="named configuration (bnas-a, bnas-d, ...)")
    p.add_argument("--layers", type=int, help="cells of a cell network")
    p.add_argument("--init-channels", type=int, help="initial channels of a cell network")
    p.add_argument("--out", required=True, metavar="WEIGHTS", help="the bnas weights file to write")


def run(args: argparse.Namespace) -> int:
    from ..interop.importer import import_checkpoint

    record = import_checkpoint(args.source, args.file, args.out, arch=args.arch,
                               dataset=args.dataset, num_classes=args.num_classes,
                               config=args.config, layers=args.layers,
                               init_channels=args.init_channels)
    print(f"imported {record['tensors']} tensors of {record['project']} from {args.file} "
          f"into {args.out}")
    for kind, note in (("dropped", "unused by the project's network"),
                       ("missing", "never saved by the project; bnas's values kept")):
        if record[kind]:
            print(f"{kind} ({note}): {', '.join(record[kind])}")
    for layer, kind in record["layer_overrides"].items():
        print(f"layer override (as the project evaluated it): {layer} = {kind}")
    for key, value in record["checkpoint"].items():
        print(f"checkpoint {key}: {value}")
    return 0
