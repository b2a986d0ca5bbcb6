"""Deterministic, resumable, host-sharded image batches for every dataset config.

``make_iterator(config.data, batch_size, seed=...)`` yields host batches forever;
batch k is a pure function of (seed, k). docs/data.md describes the config keys, the
sources, the prepared format and the resume and sharding guarantees.

Modules, lowest first: ``images`` (PIL conversion and resizing), ``sources`` (IDX,
folder, tfds; ``DataConfig``, ``DataError``), ``schedule`` (the index schedule),
``iterator`` (grain batches, ``to_float``), ``files`` and ``spec`` (for the writer),
``prepared`` (the prepared format, read and written) and ``loader`` (the entry points
that take a data config).
"""

from osgan_jax.data.files import read_json
from osgan_jax.data.images import RESAMPLE, resize_uint8
from osgan_jax.data.iterator import BatchIterator, iterate_source, to_float
from osgan_jax.data.loader import dataset_info, make_iterator, make_source
from osgan_jax.data.prepared import (
    PREPARED_FORMAT,
    PREPARED_IMAGES,
    PREPARED_LABELS,
    PREPARED_META,
    PREPARED_PROGRESS,
    PREPARED_VERSION,
    prepared_checksum,
)
from osgan_jax.data.schedule import batch_indices
from osgan_jax.data.sources import (
    DEFAULT_IDX_DIRS,
    IMAGE_EXTENSIONS,
    TFDS_NAMES,
    DataConfig,
    DataError,
    OpenedSource,
    list_image_files,
    read_idx,
)

__all__ = [
    "DataError",
    "BatchIterator",
    "make_iterator",
    "to_float",
    "dataset_info",
    "read_idx",
    "resize_uint8",
    "batch_indices",
    "list_image_files",
    "DataConfig",
    "OpenedSource",
    "make_source",
    "iterate_source",
    "read_json",
    "prepared_checksum",
    "RESAMPLE",
    "TFDS_NAMES",
    "DEFAULT_IDX_DIRS",
    "IMAGE_EXTENSIONS",
    "PREPARED_FORMAT",
    "PREPARED_VERSION",
    "PREPARED_META",
    "PREPARED_IMAGES",
    "PREPARED_LABELS",
    "PREPARED_PROGRESS",
]
