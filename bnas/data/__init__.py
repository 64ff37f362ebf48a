"""Datasets: the registry (:mod:`bnas.data.registry`: names, sizes, families; loads without
torch) and the datasets themselves (:mod:`bnas.data.datasets`, loaded on first use)."""
from ..registry import lazy_attributes
from .registry import DATASETS, DatasetInfo, dataset_info

__getattr__ = lazy_attributes(__name__, {"build_dataset": ".datasets", "num_classes_of": ".datasets"})
__all__ = ["DATASETS", "DatasetInfo", "build_dataset", "dataset_info", "num_classes_of"]
