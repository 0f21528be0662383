"""Datasets and loaders: the dataset registry (registry.py) and its builders (datasets.py), the augmentation
spec (augment.py), samplers (samplers.py) and the two loader paths (loaders.py)."""

from . import datasets  # noqa: F401  (registers the datasets)
from .augment import Augment, normalise, random_crop_flip
from .loaders import DeviceLoader, TrainDataLoader, build_loaders, loader_mode, set_epoch
from .registry import COMMON_OPTIONS, DATASETS, DataBundle, Splits, build_data, register_dataset
from .samplers import ClassBalancedBatchSampler, ShardSampler
from .subsets import long_tail_counts, stratified_counts, stratified_subset

__all__ = [
    "COMMON_OPTIONS",
    "DATASETS",
    "Augment",
    "ClassBalancedBatchSampler",
    "DataBundle",
    "DeviceLoader",
    "ShardSampler",
    "Splits",
    "TrainDataLoader",
    "build_data",
    "build_loaders",
    "loader_mode",
    "long_tail_counts",
    "normalise",
    "random_crop_flip",
    "register_dataset",
    "set_epoch",
    "stratified_counts",
    "stratified_subset",
]
