"""Host batches from an opened source: the grain pipeline, `BatchIterator` and `to_float`.

Grain maps step numbers to batches (thread prefetch, optional worker processes), which
keeps the order deterministic. Training reaches this through ``make_iterator``
(loader.py); ``prepared.prepare`` iterates the source it writes with `iterate_source`.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from osgan_jax.data.schedule import batch_indices, examples, host_slice, split_flips
from osgan_jax.data.sources import DataConfig, OpenedSource

_MAX_STEPS = 2**62

# The host formula per pixel value: a lookup keeps the device bit-identical, where
# ``x * s - 1`` may compile to one FMA (XLA:CPU then maps 255 to 1.0000001).
_UINT8_TO_FLOAT = np.arange(256, dtype=np.uint8).astype(np.float32) * np.float32(
    1.0 / 127.5
) - np.float32(1.0)


def to_float(batch: dict) -> dict:
  """``batch`` with a uint8 ``'image'`` as float32 in [-1, 1]; anything else unchanged.

  Under ``jax.jit`` it gives exactly the ``image_dtype='float32'`` batch, whatever the
  backend fuses, and keeps the image's sharding.
  """
  image = batch.get("image") if isinstance(batch, Mapping) else None
  if image is None or image.dtype != np.uint8:
    return batch
  out = dict(batch)
  index = jnp.asarray(image).astype(jnp.int32)
  out["image"] = (
      jnp.asarray(_UINT8_TO_FLOAT)
      .at[index]
      .get(mode="promise_in_bounds", out_sharding=jax.typeof(index).sharding)
  )
  return out


class _MakeBatch:
  """step -> this host's batch (a picklable callable for grain workers)."""

  def __init__(
      self, source, seed, global_batch, start, stop, shuffle, image_dtype, limit, xflip
  ):
    self.source = source
    self.limit, self.xflip = limit, xflip
    self.seed = seed
    self.global_batch = global_batch
    self.start, self.stop = start, stop
    self.shuffle = shuffle
    self.image_dtype = image_dtype

  def __call__(self, step: int) -> dict:
    n = len(self.source)
    idx = batch_indices(
        examples(n, self.limit, self.xflip),
        self.seed,
        int(step),
        self.global_batch,
        self.start,
        self.stop,
        self.shuffle,
    )
    idx, mirrored = split_flips(idx, n, self.limit, self.xflip)
    images, labels, skipped = self.source.load_batch(idx)
    if mirrored.any():
      images = np.array(images)
      images[mirrored] = images[mirrored, :, ::-1]
    if self.image_dtype == "uint8":
      images = np.ascontiguousarray(images, np.uint8)
    else:
      images = images.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)
    return {
        "image": images,
        "label": np.asarray(labels, np.int32),
        "skipped": np.int64(skipped),
    }


class BatchIterator:
  """Endless host batches; `.step`: the next global batch, `.skipped`: images replaced."""

  def __init__(self, dataset, start_step: int, info: dict):
    self._dataset = dataset
    self._it = iter(dataset)
    self.step = start_step
    self.skipped = 0
    self.info = info

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    self.skipped += int(batch.pop("skipped"))
    self.step += 1
    return batch

  def close(self) -> None:
    """Stops prefetch threads / worker processes (best effort)."""
    it, self._it = self._it, iter(())
    close = getattr(it, "close", None)
    if close is not None:
      close()


def _ignore_sigint(worker_index: int, worker_count: int) -> None:
  """Grain workers leave Ctrl-C (sent to the whole group) to the main process, which
  stops them: killed mid-batch, they would turn its clean stop into a crash."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def iterate_source(
    opened: OpenedSource,
    cfg: DataConfig,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    image_dtype: str = "float32",
) -> BatchIterator:
  """Batches ``start_step, start_step + 1, ...`` of an opened source; args unchecked."""
  # Lazy: grain costs a noticeable import and defines absl flags, which the commands
  # that import the data layer should not get before they parse their own.
  import grain

  start, stop = host_slice(batch_size, process_index, process_count)
  make_batch = _MakeBatch(
      opened.source,
      int(seed) % 2**63,
      batch_size,
      start,
      stop,
      cfg.shuffle,
      image_dtype,
      cfg.limit,
      cfg.xflip,
  )
  ds = grain.MapDataset.range(start_step, _MAX_STEPS).map(make_batch)
  ds = ds.to_iter_dataset(
      grain.ReadOptions(
          num_threads=max(cfg.num_threads, 0), prefetch_buffer_size=max(cfg.prefetch, 1)
      )
  )
  if cfg.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # grain reads its absl flags; outside absl.app use defaults
    ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=cfg.num_workers,
            per_worker_buffer_size=max(cfg.prefetch // cfg.num_workers, 1),
        ),
        worker_init_fn=_ignore_sigint,
    )
  info = {
      "num_examples": examples(len(opened.source), cfg.limit, cfg.xflip),
      "resolution": cfg.resolution,
      "channels": cfg.channels,
      "num_classes": opened.num_classes,
      "source": opened.kind,
  }
  return BatchIterator(ds, start_step, info)
