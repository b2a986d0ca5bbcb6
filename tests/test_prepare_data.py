"""Tests for osgan_jax.prepare_data and the 'prepared' data source: same batches, resume, integrity, CLI."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from osgan_jax import data
from osgan_jax import prepare_data
from osgan_jax.data import DataError

from test_data import _idx_dir
from helpers import REPO  # pylint: disable=import-error

FILES = (data.PREPARED_IMAGES, data.PREPARED_LABELS, data.PREPARED_META)


def _png_folder(root, n=20):
  """n small PNGs of assorted sizes and modes, plus one corrupt file."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    h, w = 10 + (i % 5) * 3, 9 + (i % 7) * 2
    if i % 4 == 0:
      img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif i % 4 == 1:
      img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    else:
      img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    sub = root / ("sub" if i % 3 == 0 else "")
    sub.mkdir(exist_ok=True)
    img.save(sub / f"img{i:02d}.png")
  (root / "img05b.png").write_bytes(b"not a png")  # sorts between img05 and img06
  return n + 1


def _prepare(source, out, **kw):
  kw = {
      "resolution": 8,
      "channels": 3,
      "batch": 6,
      "num_threads": 0,
      "progress_bar": False,
      **kw,
  }
  return prepare_data.prepare(source, str(out), **kw)


def _cfg(path, resolution=8, channels=3, **kw):
  return dict(
      name="prepared", path=str(path), resolution=resolution, channels=channels, **kw
  )


def _batches(cfg, n, dtype, seed=0, start_step=0, batch=5):
  it = data.make_iterator(cfg, batch, seed=seed, start_step=start_step, image_dtype=dtype)
  out = [next(it) for _ in range(n)]
  it.close()
  return out, it


def _assert_same_batches(decoding_cfg, prepared_cfg, n=9):
  for dtype in ("uint8", "float32"):
    for seed, start in ((0, 0), (3, 4)):  # n * 5 draws cross epoch boundaries
      ref, _ = _batches(decoding_cfg, n, dtype, seed, start)
      got, it = _batches(prepared_cfg, n, dtype, seed, start)
      assert it.skipped == 0 and it.info["source"] == "prepared"
      for a, b in zip(ref, got):
        assert b["image"].dtype == np.dtype(dtype) and b["label"].dtype == np.int32
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def _read(directory):
  return {name: (directory / name).read_bytes() for name in FILES}


def _one_line_error(proc, *needles, status=1):
  """One line naming the problem; exit 1, or 2 for a bad command line (every command)."""
  assert proc.returncode == status, (proc.returncode, proc.stderr)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith(
      "osgan_jax.prepare_data: error: "
  ), proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


def _cli(*args):
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return subprocess.run(
      [sys.executable, "-m", "osgan_jax.prepare_data", *args],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=env,
      timeout=120,
  )


# ----------------------------------------------------------------------------- same batches


def test_folder_prepared_yields_the_decoding_batches(tmp_path):
  n = _png_folder(tmp_path / "png")
  folder = dict(name="folder", path=str(tmp_path / "png"), resolution=8, channels=3)
  meta = _prepare(f"folder:{tmp_path / 'png'}", tmp_path / "out")
  assert meta["num_examples"] == n and meta["skipped"] == 1 and meta["num_classes"] == 0
  assert not meta["already_prepared"]
  assert sorted(os.listdir(tmp_path / "out")) == sorted(FILES)  # progress.json is gone
  assert os.path.getsize(tmp_path / "out" / data.PREPARED_IMAGES) == n * 8 * 8 * 3
  assert data.dataset_info(_cfg(tmp_path / "out")) == {
      "num_examples": n,
      "resolution": 8,
      "channels": 3,
      "num_classes": 0,
      "source": "prepared",
  }
  # the corrupt file is stored as its replacement, the next readable image, as the folder source yields it
  files = data.list_image_files(str(tmp_path / "png"))
  bad = files.index("img05b.png")
  images = np.fromfile(tmp_path / "out" / data.PREPARED_IMAGES, np.uint8).reshape(
      n, 8, 8, 3
  )
  np.testing.assert_array_equal(images[bad], images[bad + 1])
  _assert_same_batches(folder, _cfg(tmp_path / "out"))
  # grayscale output from the same folder
  _prepare(
      f"folder:{tmp_path / 'png'}",
      tmp_path / "gray",
      channels=1,
      resolution=5,
      interpolation="bilinear",
  )
  _assert_same_batches(
      {**folder, "channels": 1, "resolution": 5, "interpolation": "bilinear"},
      _cfg(tmp_path / "gray", 5, 1),
      n=3,
  )


@pytest.mark.parametrize("channels", [1, 3])
def test_idx_prepared_yields_the_decoding_batches(tmp_path, channels):
  idx = _idx_dir(tmp_path, n=23)
  meta = _prepare(
      "fashion_mnist", tmp_path / "out", data_dir=idx, resolution=12, channels=channels
  )
  assert meta["num_examples"] == 23 and meta["num_classes"] == 10 and meta["skipped"] == 0
  assert meta["spec"]["interpolation"] == "bilinear"  # the 28x28 sets' default
  decoding = dict(name="fashion_mnist", path=idx, resolution=12, channels=channels)
  _assert_same_batches(decoding, _cfg(tmp_path / "out", 12, channels))


def test_tfds_mock_prepared_yields_the_decoding_batches(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=13, policy=tfds.testing.MockPolicy.USE_CODE):
    meta = _prepare(
        "tfds:cifar10", tmp_path / "out", data_dir=str(tmp_path), resolution=16
    )
    decoding = dict(
        name="cifar10", source="tfds", path=str(tmp_path), resolution=16, channels=3
    )
    _assert_same_batches(decoding, _cfg(tmp_path / "out", 16), n=4)
  assert meta["num_classes"] == 10 and meta["spec"]["source"] == "tfds:cifar10"


def test_prepared_source_pickles_without_its_pixels(tmp_path):
  import pickle

  _png_folder(tmp_path / "png")
  _prepare(f"folder:{tmp_path / 'png'}", tmp_path / "out", resolution=32)
  source, kind, _ = data.make_source(data.DataConfig(_cfg(tmp_path / "out", 32)))
  blob = pickle.dumps(source)  # what grain sends to worker processes
  assert len(blob) < 4096 < source.images.nbytes
  idx = np.array([20, 0, 7, 7])
  for a, b in zip(pickle.loads(blob).load_batch(idx), source.load_batch(idx)):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- resume


def test_interrupted_preparation_resumes_to_identical_files(tmp_path):
  n = _png_folder(tmp_path / "png")
  source = f"folder:{tmp_path / 'png'}"
  _prepare(source, tmp_path / "ref")
  out = tmp_path / "out"

  def stop_after_two_chunks(done):
    if done >= 12:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _prepare(source, out, on_chunk=stop_after_two_chunks)
  progress = json.loads((out / data.PREPARED_PROGRESS).read_text())
  assert (
      progress["done"] == 12 and progress["num_examples"] == n and progress["batch"] == 6
  )
  assert not (out / data.PREPARED_META).exists()
  # as if killed while writing the third chunk: its bytes are partly there
  with open(out / data.PREPARED_IMAGES, "r+b") as f:
    f.seek(12 * 8 * 8 * 3)
    f.write(b"\xff" * 500)
  with pytest.raises(DataError, match="incomplete") as e:
    data.make_iterator(_cfg(out), 4, seed=0)
  assert f"--source={source}" in str(e.value) and f"--out={out}" in str(e.value)
  # the rerun (even with another --batch) finishes the recorded chunking
  calls = []
  meta = _prepare(source, out, batch=4, on_chunk=calls.append)
  assert calls == [18, n] and not meta["already_prepared"] and meta["skipped"] == 1
  assert _read(out) == _read(tmp_path / "ref")
  again = _prepare(source, out)
  assert again["already_prepared"] and _read(out) == _read(tmp_path / "ref")


def test_conflicting_preparation_into_the_same_directory(tmp_path):
  _png_folder(tmp_path / "png")
  _png_folder(tmp_path / "png2", n=5)
  source = f"folder:{tmp_path / 'png'}"
  with pytest.raises(KeyboardInterrupt):
    _prepare(
        source,
        tmp_path / "out",
        on_chunk=lambda done: (_ for _ in ()).throw(KeyboardInterrupt),
    )
  with pytest.raises(
      DataError, match="unfinished preparation with resolution=8 .this command: 16."
  ) as e:
    _prepare(source, tmp_path / "out", resolution=16)
  assert "\n" not in str(e.value)
  _prepare(source, tmp_path / "out")
  with pytest.raises(DataError, match="already holds data prepared with source=") as e:
    _prepare(f"folder:{tmp_path / 'png2'}", tmp_path / "out")
  assert "pass another --out" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- integrity


def test_damaged_prepared_data_is_a_data_error(tmp_path):
  _png_folder(tmp_path / "png")
  _prepare(f"folder:{tmp_path / 'png'}", tmp_path / "good")
  redo = f"python -m osgan_jax.prepare_data --source=folder:{tmp_path / 'png'} --resolution=8 --channels=3"

  def damaged(name, edit):
    d = tmp_path / name
    shutil.copytree(tmp_path / "good", d)
    edit(d)
    return _cfg(d)

  def expect(cfg, pattern, at_info=True):
    if at_info:
      with pytest.raises(DataError, match=pattern) as e:
        data.dataset_info(cfg)
      assert "\n" not in str(e.value)
    else:
      data.dataset_info(cfg)  # only meta.json and the file sizes: cannot tell
    with pytest.raises(DataError, match=pattern) as e:
      data.make_iterator(cfg, 4, seed=0)
    assert "\n" not in str(e.value)
    return str(e.value)

  def edit_meta(**fields):
    def edit(d):
      meta = json.loads((d / data.PREPARED_META).read_text())
      meta.update(fields)
      (d / data.PREPARED_META).write_text(json.dumps(meta))

    return edit

  def flip(name, offset):
    def edit(d):
      with open(d / name, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))

    return edit

  expect(
      damaged("json", lambda d: (d / data.PREPARED_META).write_text("{trunc")),
      "corrupt header",
  )
  expect(
      damaged("fields", edit_meta(resolution="8")),
      "corrupt header .missing or mistyped resolution",
  )
  expect(damaged("version", edit_meta(version=99)), "version 99")
  msg = expect(
      damaged("short", lambda d: os.truncate(d / data.PREPARED_IMAGES, 1000)),
      "images.u8 is 1000 bytes, expected 4032 bytes",
  )
  assert redo in msg
  expect(
      damaged("nolabels", lambda d: os.remove(d / data.PREPARED_LABELS)),
      "labels.i32 is missing",
  )
  assert redo in expect(
      damaged("classes", edit_meta(num_classes=3)), "checksum mismatch", at_info=False
  )
  expect(
      damaged("last", flip(data.PREPARED_IMAGES, -1)), "checksum mismatch", at_info=False
  )
  expect(
      damaged("first", flip(data.PREPARED_IMAGES, 0)), "checksum mismatch", at_info=False
  )
  expect(
      damaged("label", flip(data.PREPARED_LABELS, 8)), "checksum mismatch", at_info=False
  )
  # the rerun notices damage instead of reporting "already prepared"
  with pytest.raises(DataError, match="checksum mismatch"):
    _prepare(f"folder:{tmp_path / 'png'}", tmp_path / "first")


def test_missing_or_mismatched_prepared_data(tmp_path):
  (tmp_path / "empty").mkdir()
  for path, pattern in (
      (tmp_path / "empty", "holds no prepared data .no meta.json."),
      (tmp_path / "nope", "does not exist"),
  ):
    with pytest.raises(DataError, match=pattern) as e:
      data.dataset_info(_cfg(path))
    assert (
        "python -m osgan_jax.prepare_data --source=SOURCE --resolution=8 --channels=3"
        in str(e.value)
    )
  with pytest.raises(DataError, match="needs data.path"):
    data.make_iterator(_cfg(""), 4, seed=0)
  _png_folder(tmp_path / "png")
  _prepare(f"folder:{tmp_path / 'png'}", tmp_path / "out")
  for fn in (data.dataset_info, lambda c: data.make_iterator(c, 4, seed=0)):
    with pytest.raises(
        DataError, match=r"holds 8x8x3 images \(resolution=8, channels=3"
    ) as e:
      fn(_cfg(tmp_path / "out", resolution=16))
    msg = str(e.value)
    assert "data.resolution=16" in msg and "\n" not in msg
    assert (
        f"--source=folder:{tmp_path / 'png'} --resolution=16 --channels=3 --out=NEW_DIR"
        in msg
    )
    with pytest.raises(DataError, match="channels=3"):
      fn(_cfg(tmp_path / "out", channels=1))


def test_source_errors_are_one_line():
  for source, pattern in (
      ("folder:", "needs a PATH"),
      ("tfds:imagenet", "unknown tfds set"),
      ("bogus", "is not folder:PATH, tfds:NAME or one of"),
      ("prepared", "is not folder:PATH"),
      ("s3:x", "is not folder:PATH"),
  ):
    with pytest.raises(DataError, match=pattern) as e:
      prepare_data.source_config(source, resolution=8, channels=3)
    assert "\n" not in str(e.value)
  cfg, spec = prepare_data.source_config(
      "tfds:lsun/church_outdoor", resolution=64, channels=3
  )
  assert cfg["name"] == "lsun_church" and spec["source"] == "tfds:lsun_church"
  _, spec = prepare_data.source_config("celeb_a", resolution=64, channels=3)
  assert spec["center_crop"] == 108 and spec["interpolation"] == "bicubic"
  with pytest.raises(DataError, match="--channels must be 1 or 3"):
    prepare_data.source_config("mnist", resolution=8, channels=2)
  with pytest.raises(DataError, match="--interpolation must be one of"):
    prepare_data.source_config("mnist", resolution=8, channels=1, interpolation="cubic")


# ----------------------------------------------------------------------------- command line


@pytest.mark.long
def test_cli_end_to_end_with_worker_processes(tmp_path):
  n = _png_folder(tmp_path / "png")
  _prepare(f"folder:{tmp_path / 'png'}", tmp_path / "ref", batch=4)
  args = [
      f"--source=folder:{tmp_path / 'png'}",
      "--resolution=8",
      "--channels=3",
      f"--out={tmp_path / 'out'}",
      "--batch=4",
      "--num_workers=2",
  ]
  proc = _cli(*args)
  assert proc.returncode == 0, proc.stderr
  assert (
      f"prepared {n} images of 8x8x3" in proc.stdout
      and "1 unreadable images replaced" in proc.stdout
  )
  assert _read(tmp_path / "out") == _read(tmp_path / "ref")
  again = _cli(*args)
  assert again.returncode == 0 and "already prepared" in again.stdout, again.stderr
  other = _cli(*args[:1], "--resolution=16", *args[2:])
  _one_line_error(
      other, "already holds data prepared with resolution=8 (this command: 16)"
  )


@pytest.mark.long
def test_cli_errors_are_one_line_with_status_1_or_2(tmp_path):
  _one_line_error(
      _cli(
          "--source=folder:" + str(tmp_path / "missing"),
          "--resolution=8",
          "--channels=3",
          f"--out={tmp_path / 'out'}",
      ),
      "does not exist",
  )
  _one_line_error(
      _cli(
          "--source=bogus", "--resolution=8", "--channels=3", f"--out={tmp_path / 'out'}"
      ),
      "--source='bogus'",
  )
  _one_line_error(
      _cli("--source=mnist", "--channels=3", f"--out={tmp_path / 'out'}"),
      "--resolution",
      status=2,
  )
  _one_line_error(
      _cli(
          "--source=mnist",
          "--resolution=8",
          "--channels=3",
          f"--out={tmp_path / 'out'}",
          "--nonsense=1",
      ),
      "nonsense",
      status=2,
  )
  assert not (tmp_path / "out").exists()
