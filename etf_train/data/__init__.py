"""Datasets and loaders: the dataset registry (registry.py) and its builders (datasets.py), image folders decoded
once into a cache file (cache.py), the augmentation spec (augment.py), samplers (samplers.py), the two loader
paths (loaders.py), batch mixing (mix.py) and label noise (noise.py)."""

from . import datasets  # noqa: F401  (registers the datasets)
from .augment import Augment, normalise, random_crop_flip
from .loaders import (
    DeviceLoader,
    TrainDataLoader,
    build_loaders,
    loader_mode,
    set_epoch,
)
from .mix import MIXES, CutMix, Mix, MixUp, NoMix, build_mix
from .noise import flip_labels, noisy_fit
from .registry import (
    COMMON_OPTIONS,
    DATASETS,
    DataBundle,
    Splits,
    build_data,
    register_dataset,
)
from .samplers import ClassBalancedBatchSampler, ShardSampler
from .subsets import long_tail_counts, stratified_counts, stratified_subset

__all__ = [
    "COMMON_OPTIONS",
    "DATASETS",
    "MIXES",
    "Augment",
    "ClassBalancedBatchSampler",
    "CutMix",
    "DataBundle",
    "DeviceLoader",
    "Mix",
    "MixUp",
    "NoMix",
    "ShardSampler",
    "Splits",
    "TrainDataLoader",
    "build_data",
    "build_loaders",
    "build_mix",
    "flip_labels",
    "loader_mode",
    "long_tail_counts",
    "noisy_fit",
    "normalise",
    "random_crop_flip",
    "register_dataset",
    "set_epoch",
    "stratified_counts",
    "stratified_subset",
]
