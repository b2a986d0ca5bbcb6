"""Pieces every task shares: the host batch source of the loop."""

from __future__ import annotations

from osgan_jax import data as data_lib


def host_batches(data: dict, batch_size: int, seed: int):
  """``batches(start_step, process_index, process_count)`` for ``loop.Task``: this
  process's uint8 batches of ``data`` (a dict of ``config.data``) from ``start_step``."""

  data = data_lib.DataConfig(data)

  def batches(start_step, process_index, process_count):
    return data_lib.make_iterator(
        data,
        batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        image_dtype='uint8',
    )

  return batches
