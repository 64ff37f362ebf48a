"""Every binarization scheme trains a BNAS cell network (the BNAS-A cell, 8 cells, C=16) on the
digits above chance (10%) in a short CPU run of the real engine: the retraining the
mission's ``bnas train --arch latest_cell_zeroise --binarizer X`` does, with a short budget."""
from __future__ import annotations

import pytest

from bnas.binarize import names
from bnas.train import resolve_config, train

BUDGET = {"arch": "latest_cell_zeroise", "layers": 8, "init_channels": 16, "dataset": "digits",
          "epochs": 5, "batch_size": 32, "train_subset": 640, "val_subset": 180, "workers": 0,
          "progress": False}
# The SGD recipes peak at lr 0.05 (BNAS) or 0.1 (RBNN, ReCU, SiMaN) for runs of hundreds of
# epochs; a hundred steps at those rates diverge in cells, where no BatchNorm follows a binary
# convolution. Bop and Bop2ndOrder keep their recipes (Adam drives the real-valued parameters).
QUICK_LR = {"plain": 0.005, "rbnn": 0.005, "recu": 0.01, "siman": 0.02}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", names())
def test_every_scheme_trains_a_bnas_cell_network(tmp_path, scheme):
    lr = {"lr": QUICK_LR[scheme]} if scheme in QUICK_LR else {}
    cfg = resolve_config(None, {**BUDGET, "binarizer": scheme, "out": str(tmp_path), **lr})
    result = train(cfg)
    assert result["best_top1"] > 18.0, result
