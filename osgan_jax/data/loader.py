"""The entry points that take a data config: `make_iterator`, `make_source`, `dataset_info`.

They choose between the prepared directory (prepared.py) and the decoding sources
(sources.py) by ``data.name``. They sit above prepared.py because its writer itself
reads the decoding sources through the iterator.
"""

from __future__ import annotations

from osgan_jax.data.iterator import BatchIterator, iterate_source
from osgan_jax.data.prepared import open_prepared, read_meta
from osgan_jax.data.schedule import examples
from osgan_jax.data.sources import DataConfig, OpenedSource, open_source, source_info


def make_source(cfg: DataConfig) -> OpenedSource:
  """(source, source kind, num_classes) for a validated config, any data.name."""
  return open_prepared(cfg) if cfg.name == "prepared" else open_source(cfg)


def dataset_info(data_config) -> dict:
  """{'num_examples', 'resolution', 'channels', 'num_classes', 'source'}; no decoding.
  ``num_examples`` counts what training draws from (``data.limit``, ``data.xflip``)."""
  cfg = DataConfig(data_config)
  if cfg.name != "prepared":
    info = source_info(cfg)
  else:
    meta = read_meta(cfg)
    info = {
        "resolution": cfg.resolution,
        "channels": cfg.channels,
        "num_examples": meta["num_examples"],
        "num_classes": meta["num_classes"],
        "source": "prepared",
    }
  return {**info, "num_examples": examples(info["num_examples"], cfg.limit, cfg.xflip)}


def make_iterator(
    data_config,
    batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    image_dtype: str = "float32",
) -> BatchIterator:
  """Yields {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]} forever.

  image_dtype='uint8': the raw pixels, for `to_float` on the device. b is this host's
  share, batch_size // process_count; batch k is a pure function of (seed, k). Raises
  DataError for unusable data, ValueError for bad arguments (docs/data.md).
  """
  if batch_size <= 0 or process_count <= 0 or batch_size % process_count:
    raise ValueError(
        f"batch_size={batch_size} must be a positive multiple of process_count={process_count}"
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  if image_dtype not in ("float32", "uint8"):
    raise ValueError(f"image_dtype must be 'float32' or 'uint8', got {image_dtype!r}")
  cfg = DataConfig(data_config)
  return iterate_source(
      make_source(cfg),
      cfg,
      batch_size=batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
      image_dtype=image_dtype,
  )
