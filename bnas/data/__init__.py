"""Datasets: what the builder needs (:mod:`bnas.data.info`) and the datasets themselves."""
from .datasets import DATASETS, build_dataset, num_classes_of
from .info import DATASET_INFO, DatasetInfo, dataset_info

__all__ = ["DATASETS", "DATASET_INFO", "DatasetInfo", "build_dataset", "dataset_info", "num_classes_of"]
