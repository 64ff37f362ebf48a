"""Shared test fixtures."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own user genotype directory and a fixed seed."""
    monkeypatch.setenv("BNAS_GENOTYPE_DIR", str(tmp_path_factory.mktemp("user_genotypes")))
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def amx_everywhere():
    """The ``amx`` kernel path runs every convolution as tile products (by default only the
    shapes where they are faster than its popcount kernel), where this CPU has that path; gives
    the default rule (None without that path)."""
    from bnas.deploy import kernels as K
    from bnas.errors import BnasError

    try:
        k = K.kernels()
    except BnasError:
        k = None
    if k is None or "amx" not in K.supported_isas():
        yield None
        return
    before = k.amx_rule((64, 0, 1, 0))
    try:
        yield before
    finally:
        k.amx_rule(before)
