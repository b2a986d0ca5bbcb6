"""Deterministic, resumable, host-sharded image batches: ``make_iterator(config.data,
batch_size, seed=...)`` yields host batches forever, batch k a pure function of (seed,
k). ``docs/data.md`` describes the keys, sources, prepared format and modules."""

from osgan_jax.data.files import read_json
from osgan_jax.data.images import RESAMPLE, resize_uint8
from osgan_jax.data.iterator import BatchIterator, iterate_source, to_float
from osgan_jax.data.loader import dataset_info, make_iterator, make_source
from osgan_jax.data.prepared import PREPARED_FORMAT, PREPARED_IMAGES, PREPARED_LABELS
from osgan_jax.data.prepared import PREPARED_META, PREPARED_PROGRESS, PREPARED_VERSION
from osgan_jax.data.prepared import prepared_checksum
from osgan_jax.data.schedule import batch_indices
from osgan_jax.data.sources import DEFAULT_IDX_DIRS, IMAGE_EXTENSIONS, TFDS_NAMES
from osgan_jax.data.sources import DataConfig, DataError, OpenedSource
from osgan_jax.data.sources import list_image_files, read_idx
