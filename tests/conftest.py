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
