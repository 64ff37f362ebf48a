"""Datasets: what the builder needs (:mod:`bnas.data.info`) and the loaders."""
from .info import DATASET_INFO, DatasetInfo, dataset_info

__all__ = ["DATASET_INFO", "DatasetInfo", "dataset_info"]
