"""Datasets, transforms and splits. ``load("digits")`` is the bundled default."""

from lvmkit.data.dataset import Dataset, TensorData, as_dataset
from lvmkit.data.datasets import BUNDLED, DATASETS, cache_dir, fetch, load, load_digits
from lvmkit.data.idx import load_idx, load_idx_folder, read_idx
from lvmkit.data.images import ImageData, check_images, check_labels
from lvmkit.data.loaders import DataError, LevelsInferred, PixelRange, load_array
from lvmkit.data.png import load_image_folder
from lvmkit.data.transforms import (
    binarize,
    dequantize,
    dynamic_binarize,
    quantize,
    scale,
    split,
    train_val_test,
)

__all__ = [
    "BUNDLED",
    "DATASETS",
    "cache_dir",
    "fetch",
    "load_idx_folder",
    "train_val_test",
    "DataError",
    "LevelsInferred",
    "PixelRange",
    "Dataset",
    "TensorData",
    "as_dataset",
    "ImageData",
    "binarize",
    "check_images",
    "check_labels",
    "dequantize",
    "dynamic_binarize",
    "load",
    "load_array",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "quantize",
    "read_idx",
    "scale",
    "split",
]
