"""The spec of a preparation: every setting that decides a prepared directory's pixels
(equal specs write identical files, so a rerun resumes or recognises a finished one)."""

from __future__ import annotations

import os
import shlex

from osgan_jax.data.images import RESAMPLE
from osgan_jax.data.sources import (
    TFDS_NAMES,
    DataConfig,
    DataError,
    default_center_crop,
    default_interpolation,
)


def source_config(
    source: str,
    *,
    resolution: int,
    channels: int,
    split: str = "train",
    center_crop: int = -1,
    interpolation: str = "",
    data_dir: str = "",
    download: bool = False,
    num_workers: int = 0,
    num_threads: int = 4,
) -> tuple:
  """(data config for osgan_jax.data, spec) of the prepare_data flags; DataError if bad."""
  if resolution <= 0:
    raise DataError(f"--resolution must be a positive int, got {resolution}")
  if channels not in (1, 3):
    raise DataError(f"--channels must be 1 or 3, got {channels}")
  if center_crop < -1:
    raise DataError(
        f"--center_crop must be >= -1 (-1: the data set's default, 0: none), got {center_crop}"
    )
  if interpolation and interpolation not in RESAMPLE:
    raise DataError(
        f"--interpolation must be one of {', '.join(RESAMPLE)}, got {interpolation!r}"
    )
  data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else ""
  kind, sep, rest = source.partition(":")
  if kind == "folder" and sep:
    if not rest:
      raise DataError("--source=folder:PATH needs a PATH (a directory of images)")
    if data_dir:
      raise DataError("--data_dir does not apply to --source=folder:PATH")
    name, path, mode = "folder", os.path.abspath(os.path.expanduser(rest)), "auto"
    source, split = f"folder:{path}", "train"
  elif kind == "tfds" and sep:
    tfds_names = {v: k for k, v in TFDS_NAMES.items()}
    name = rest if rest in TFDS_NAMES else tfds_names.get(rest, "")
    if not name:
      raise DataError(
          f"--source=tfds:{rest}: unknown tfds set (supported: {', '.join(TFDS_NAMES)})"
      )
    path, mode, source = data_dir, "tfds", f"tfds:{name}"
  elif not sep and source in TFDS_NAMES:
    name, path, mode = source, data_dir, "auto"
  else:
    raise DataError(
        f"--source={source!r} is not folder:PATH, tfds:NAME or one of {', '.join(TFDS_NAMES)}"
    )
  cfg = {
      "name": name,
      "path": path,
      "resolution": resolution,
      "channels": channels,
      "split": split or "train",
      "source": mode,
      "center_crop": center_crop,
      "interpolation": interpolation,
      "shuffle": False,
      "num_workers": num_workers,
      "num_threads": num_threads,
      "prefetch": max(num_threads, 2),
      "download": download,
  }
  resolved = DataConfig(cfg)  # validates and resolves the per-dataset defaults
  spec = {
      "source": source,
      "name": name,
      "split": resolved.split,
      "resolution": resolution,
      "channels": channels,
      "center_crop": resolved.center_crop,
      "interpolation": resolved.interpolation,
      "data_dir": data_dir,
  }
  return cfg, spec


def prepare_command(spec: dict, out: str, resolution: int = 0, channels: int = 0) -> str:
  """The prepare_data command that writes `spec` (at another size, if given) into `out`."""
  name = spec.get("name", "")
  args = [
      f"--source={spec.get('source', 'SOURCE')}",
      f"--resolution={resolution or spec.get('resolution')}",
      f"--channels={channels or spec.get('channels')}",
  ]
  if name != "folder" and spec.get("split", "train") != "train":
    args.append(f"--split={spec['split']}")
  if spec.get("center_crop", default_center_crop(name)) != default_center_crop(name):
    args.append(f"--center_crop={spec['center_crop']}")
  interpolation = default_interpolation(name)
  if spec.get("interpolation", interpolation) != interpolation:
    args.append(f"--interpolation={spec['interpolation']}")
  if spec.get("data_dir"):
    args.append(f"--data_dir={spec['data_dir']}")
  args.append(f"--out={out}")
  return "python -m osgan_jax.prepare_data " + " ".join(shlex.quote(a) for a in args)


def differences(old: dict, new: dict) -> str:
  """The settings in which spec `new` differs from spec `old`, for an error message."""
  keys = [k for k in new if old.get(k) != new[k]] or ["spec"]
  return ", ".join(f"{k}={old.get(k)!r} (this command: {new.get(k)!r})" for k in keys)
