"""Datasets, transforms and splits. ``load("digits")`` is the bundled default."""

from lvmkit.data.dataset import Dataset, TensorData, as_dataset, check_count
from lvmkit.data.images import ImageData, check_images, check_labels
from lvmkit.data.loaders import (
    DataError,
    load,
    load_array,
    load_digits,
    load_idx,
    load_image_folder,
    read_idx,
)
from lvmkit.data.transforms import binarize, dynamic_binarize, quantize, scale, split

__all__ = [
    "DataError",
    "Dataset",
    "TensorData",
    "as_dataset",
    "check_count",
    "ImageData",
    "binarize",
    "check_images",
    "check_labels",
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
