"""Decodes a data set once into raw uint8 pixels that training reads without decoding,
resumably: ``python -m osgan_jax.prepare_data --source=SOURCE --resolution=R
--channels=C --out=DIR``, then train with ``data.name=prepared`` (``docs/data.md``)."""

from __future__ import annotations

import os
import sys

from absl import flags

from osgan_jax import cli
from osgan_jax.data.files import read_json
from osgan_jax.data.prepared import PREPARED_META, check_blocks, prepare, read_progress
from osgan_jax.data.sources import DataError
from osgan_jax.data.spec import source_config  # noqa: F401  (tests and experiments)

COMMAND = cli.Command(
    "osgan_jax.prepare_data",
    "python -m osgan_jax.prepare_data --source=SOURCE --resolution=R --channels=C --out=DIR",
)
F = COMMAND.flags

_SOURCE = flags.DEFINE_string(
    "source",
    None,
    "folder:PATH, tfds:NAME, or a data.name such as fashion_mnist.",
    flag_values=F,
)
_RESOLUTION = flags.DEFINE_integer(
    "resolution", None, "Output height = width (data.resolution).", flag_values=F
)
_CHANNELS = flags.DEFINE_integer(
    "channels", None, "1 or 3 (data.channels).", flag_values=F
)
_OUT = flags.DEFINE_string(
    "out",
    None,
    "Directory to write; train with data.name=prepared, data.path=OUT.",
    flag_values=F,
)
_SPLIT = flags.DEFINE_string(
    "split",
    "train",
    "data.split (IDX: train/test; tfds: any split string).",
    flag_values=F,
)
_CENTER_CROP = flags.DEFINE_integer(
    "center_crop",
    -1,
    "data.center_crop: -1 = per-dataset default, 0 = none.",
    flag_values=F,
)
_INTERPOLATION = flags.DEFINE_string(
    "interpolation",
    "",
    "data.interpolation: bilinear, bicubic, lanczos, nearest; empty = per-dataset default.",
    flag_values=F,
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    "",
    "IDX directory or tfds data_dir (data.path); not for folders.",
    flag_values=F,
)
_DOWNLOAD = flags.DEFINE_boolean(
    "download", False, "tfds only: let tfds download and prepare the set.", flag_values=F
)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "Decoding worker processes (data.num_workers).", flag_values=F
)
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", 4, "Decoding threads (data.num_threads).", flag_values=F
)
_BATCH = flags.DEFINE_integer(
    "batch",
    256,
    "Images per chunk: the unit of flushing and of resuming "
    "(about num_threads + 1 chunks are in memory at once).",
    flag_values=F,
)
_VERIFY = flags.DEFINE_bool(
    "verify",
    False,
    "Check every block of the prepared data in --out against its checksum, then exit "
    "(1 if one differs).",
    flag_values=F,
)
REQUIRED = ("source", "resolution", "channels", "out")


def verify(out: str) -> int:
  """Every block of the prepared images in ``out`` against meta.json's checksums."""
  meta = read_json(os.path.join(out, PREPARED_META))
  if not meta:
    raise cli.CommandError(f"{out} holds no prepared data ({PREPARED_META} missing)")
  if not meta.get("blocks"):
    print(f"{out}: prepared before block checksums; only the header can be checked")
  try:
    check_blocks(out, meta, everything=True)
  except DataError as e:
    raise cli.CommandError(str(e)) from None
  print(f"{out}: {len(meta.get('blocks', []))} blocks ok")
  return 0


def main(args) -> int:
  del args
  if _VERIFY.value:
    if not _OUT.value:
      raise cli.CommandError("--verify needs --out", 2)
    return verify(os.path.abspath(os.path.expanduser(_OUT.value)))
  missing = [f"--{name}" for name in REQUIRED if F[name].value is None]
  if missing:
    raise cli.CommandError(f"{', '.join(missing)} required (--help lists the flags)", 2)
  out = _OUT.value
  try:
    meta = prepare(
        _SOURCE.value,
        out,
        resolution=_RESOLUTION.value,
        channels=_CHANNELS.value,
        split=_SPLIT.value,
        center_crop=_CENTER_CROP.value,
        interpolation=_INTERPOLATION.value,
        data_dir=_DATA_DIR.value,
        download=_DOWNLOAD.value,
        num_workers=_NUM_WORKERS.value,
        num_threads=_NUM_THREADS.value,
        batch=_BATCH.value,
    )
  except DataError as e:
    raise cli.CommandError(str(e)) from None
  except OSError as e:
    raise cli.CommandError(f"{type(e).__name__}: {e}") from None
  except KeyboardInterrupt:
    progress = read_progress(out)
    print(
        f"{COMMAND.prog}: interrupted after {progress.get('done', 0)} of {progress.get('num_examples', '?')} "
        f"images; rerun the same command to resume",
        file=sys.stderr,
    )
    sys.exit(130)
  size = f"{meta['num_examples']} images of {meta['resolution']}x{meta['resolution']}x{meta['channels']}"
  where = os.path.abspath(out)
  if meta["already_prepared"]:
    print(f"{where} is already prepared ({size} from {meta['source']}); nothing to do")
  else:
    rate = meta["images_written"] / max(meta["seconds"], 1e-9)
    replaced = (
        f", {meta['skipped']} unreadable images replaced by the next readable one"
        if meta["skipped"]
        else ""
    )
    print(
        f"prepared {size} from {meta['source']} into {where} ({rate:.0f} images/s{replaced}); "
        f"train with data.name=prepared data.path={where}"
    )
  return 0


def run() -> None:
  sys.exit(COMMAND.run(main))


if __name__ == "__main__":
  run()
