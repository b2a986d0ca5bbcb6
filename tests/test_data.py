"""Tests for osgan_jax.data: IDX parsing, folder and tfds sources, determinism, resume, sharding."""

import gzip
import logging
import os
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from osgan_jax import data
from osgan_jax.data import DataError
from helpers import FASHION_MNIST_DIR as FASHION_DIR  # pylint: disable=import-error
from helpers import needs_fashion_mnist  # pylint: disable=import-error


def _cfg(**kw):
  base = dict(name="fashion_mnist", path="", resolution=32, channels=1, split="train")
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _take(it, n):
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def _write_idx(path, array, *, compress=True, magic=None):
  array = np.asarray(array, np.uint8)
  header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  payload = header + array.tobytes()
  if compress:
    with gzip.open(path, "wb") as f:
      f.write(payload)
  else:
    with open(path, "wb") as f:
      f.write(payload)
  return payload


def _idx_dir(tmp_path, n=50, split="train"):
  """n 28x28 images; image i is constant 5*i, its label is i % 10."""
  d = tmp_path / "idx"
  d.mkdir(exist_ok=True)
  prefix = "train" if split == "train" else "t10k"
  images = np.repeat((5 * np.arange(n, dtype=np.uint8))[:, None, None], 28, 1).repeat(
      28, 2
  )
  _write_idx(d / f"{prefix}-images-idx3-ubyte.gz", images)
  _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
  return str(d)


def _index_of(batch_images):
  """Recovers the example index of constant images written by _idx_dir."""
  v = (batch_images.mean(axis=(1, 2, 3)) + 1.0) * 127.5
  return np.rint(v / 5).astype(int)


# ----------------------------------------------------------------------------- IDX


def test_read_idx_gz_and_raw(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, (7,), dtype=np.uint8)
  _write_idx(tmp_path / "im.gz", images)
  _write_idx(tmp_path / "lab", labels, compress=False)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "im.gz"), 3), images)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "lab"), 1), labels)


def test_read_idx_rejects_corrupt_files(tmp_path):
  images = np.zeros((4, 28, 28), np.uint8)
  # wrong magic (0x0801 = labels where images are expected: wrong number of dims)
  _write_idx(tmp_path / "dims.gz", images)
  with pytest.raises(DataError, match="3 dimensions, expected 1"):
    data.read_idx(str(tmp_path / "dims.gz"), 1)
  _write_idx(tmp_path / "magic.gz", images, magic=b"\x12\x34\x08\x03")
  with pytest.raises(DataError, match="bad magic"):
    data.read_idx(str(tmp_path / "magic.gz"), 3)
  _write_idx(tmp_path / "type.gz", images, magic=b"\x00\x00\x0d\x03")
  with pytest.raises(DataError, match="element type"):
    data.read_idx(str(tmp_path / "type.gz"), 3)
  # truncated payload inside a valid gzip stream
  payload = _write_idx(tmp_path / "x", images, compress=False)
  with gzip.open(tmp_path / "short.gz", "wb") as f:
    f.write(payload[:-100])
  with pytest.raises(DataError, match="truncated"):
    data.read_idx(str(tmp_path / "short.gz"), 3)
  # truncated gzip file (cut mid-stream)
  full = gzip.compress(payload)
  (tmp_path / "cut.gz").write_bytes(full[: len(full) // 2])
  with pytest.raises(DataError, match="cut.gz"):
    data.read_idx(str(tmp_path / "cut.gz"), 3)
  # not gzip at all
  (tmp_path / "junk.gz").write_bytes(b"definitely not gzip data")
  with pytest.raises(DataError, match="junk.gz"):
    data.read_idx(str(tmp_path / "junk.gz"), 3)
  with pytest.raises(DataError, match="not found"):
    data.read_idx(str(tmp_path / "nope.gz"), 3)


@needs_fashion_mnist
def test_real_fashion_mnist_files():
  images = data.read_idx(f"{FASHION_DIR}/train-images-idx3-ubyte.gz", 3)
  labels = data.read_idx(f"{FASHION_DIR}/train-labels-idx1-ubyte.gz", 1)
  assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 255
  assert labels.shape == (60000,) and set(np.unique(labels)) == set(range(10))
  info = data.dataset_info(_cfg(resolution=64, channels=3))
  assert info == {
      "num_examples": 60000,
      "resolution": 64,
      "channels": 3,
      "num_classes": 10,
      "source": "idx",
  }
  test_info = data.dataset_info(_cfg(split="test"))
  assert test_info["num_examples"] == 10000
  b = _take(data.make_iterator(_cfg(split="test", resolution=32), 64, seed=0), 1)[0]
  assert b["image"].shape == (64, 32, 32, 1) and b["image"].dtype == np.float32
  assert b["image"].min() == -1.0 and 0.5 < b["image"].max() <= 1.0
  assert b["label"].dtype == np.int32 and set(b["label"]) <= set(range(10))


def test_missing_fashion_mnist_mentions_apt_get(tmp_path):
  for fn in (data.dataset_info, lambda c: data.make_iterator(c, 8, seed=0)):
    with pytest.raises(DataError) as e:
      fn(_cfg(path=str(tmp_path)))
    msg = str(e.value)
    assert "sudo apt-get install dataset-fashion-mnist" in msg and str(tmp_path) in msg
    assert "\n" not in msg


def test_resize_is_bit_identical_to_pil():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (37, 28, 28), dtype=np.uint8)
  for res in (16, 28, 32, 64):
    for resample in (Image.BILINEAR, Image.BICUBIC):
      ours = data.resize_uint8(images, res, resample)
      ref = np.stack(
          [np.asarray(Image.fromarray(a).resize((res, res), resample)) for a in images]
      )
      np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("channels", [1, 3])
def test_idx_iterator_shapes_range_labels(tmp_path, channels):
  path = _idx_dir(tmp_path, n=50)
  it = data.make_iterator(_cfg(path=path, resolution=32, channels=channels), 10, seed=3)
  assert it.info == {
      "num_examples": 50,
      "resolution": 32,
      "channels": channels,
      "num_classes": 10,
      "source": "idx",
  }
  batches = _take(it, 5)  # exactly one epoch
  seen = []
  for b in batches:
    assert set(b) == {"image", "label"}
    assert b["image"].shape == (10, 32, 32, channels) and b["image"].dtype == np.float32
    assert b["label"].shape == (10,) and b["label"].dtype == np.int32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
    idx = _index_of(b["image"])
    np.testing.assert_array_equal(b["label"], idx % 10)  # image and label stay paired
    seen.extend(idx)
  assert sorted(seen) == list(range(50))  # an epoch is a permutation
  assert seen != list(range(50))  # and it is shuffled
  assert it.skipped == 0 and it.step == 5


def test_pixel_range_endpoints(tmp_path):
  d = tmp_path / "ends"
  d.mkdir()
  images = np.zeros((2, 28, 28), np.uint8)
  images[1] = 255
  _write_idx(d / "train-images-idx3-ubyte.gz", images)
  _write_idx(d / "train-labels-idx1-ubyte.gz", [0, 1])
  b = _take(data.make_iterator(_cfg(path=str(d), resolution=28), 2, seed=0), 1)[0]
  order = np.argsort(b["label"])
  np.testing.assert_array_equal(b["image"][order[0]], -1.0)
  np.testing.assert_array_equal(b["image"][order[1]], 1.0)


def test_exact_resume_across_epochs(tmp_path):
  cfg = _cfg(path=_idx_dir(tmp_path, n=50))
  fresh = _take(
      data.make_iterator(cfg, 16, seed=7), 12
  )  # batches straddle epoch boundaries
  resumed = _take(data.make_iterator(cfg, 16, seed=7, start_step=7), 5)
  for a, b in zip(fresh[7:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # positions are consecutive through the epoch schedule: 12*16 = 192 draws from 50 examples
  idx = np.concatenate([_index_of(b["image"]) for b in fresh])
  for e in range(3):
    assert sorted(idx[e * 50 : (e + 1) * 50]) == list(range(50))
  other = _take(data.make_iterator(cfg, 16, seed=8), 1)[0]
  assert not np.array_equal(other["label"], fresh[0]["label"]) or not np.array_equal(
      other["image"], fresh[0]["image"]
  )
  # thread count does not change the batches
  sync = _take(
      data.make_iterator(
          ml_collections.ConfigDict({**cfg.to_dict(), "num_threads": 0}), 16, seed=7
      ),
      12,
  )
  for a, b in zip(fresh, sync):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_process_sharding_concatenates_to_global_batch(tmp_path):
  cfg = _cfg(path=_idx_dir(tmp_path, n=50), channels=3)
  full = _take(data.make_iterator(cfg, 12, seed=1, start_step=2), 6)
  parts = [
      _take(
          data.make_iterator(
              cfg, 12, seed=1, start_step=2, process_index=p, process_count=3
          ),
          6,
      )
      for p in range(3)
  ]
  for step in range(6):
    for key in ("image", "label"):
      assert parts[0][step][key].shape[0] == 4
      np.testing.assert_array_equal(
          np.concatenate([parts[p][step][key] for p in range(3)]), full[step][key]
      )
  with pytest.raises(ValueError, match="multiple of process_count"):
    data.make_iterator(cfg, 10, seed=0, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    data.make_iterator(cfg, 12, seed=0, process_index=3, process_count=3)


def test_unshuffled_order(tmp_path):
  cfg = _cfg(path=_idx_dir(tmp_path, n=50), shuffle=False)
  b = _take(data.make_iterator(cfg, 20, seed=0), 3)
  idx = np.concatenate([_index_of(x["image"]) for x in b])
  np.testing.assert_array_equal(idx, np.arange(60) % 50)


@pytest.mark.parametrize("channels", [1, 3])
def test_uint8_batches_convert_on_device_to_the_float_batches(tmp_path, channels):
  import jax

  cfg = _cfg(
      path=_idx_dir(tmp_path, n=50), resolution=20, channels=channels
  )  # resized: every grey level
  raw = _take(data.make_iterator(cfg, 16, seed=4, start_step=2, image_dtype="uint8"), 4)
  ref = _take(data.make_iterator(cfg, 16, seed=4, start_step=2), 4)
  to_float = jax.jit(data.to_float)
  for a, b in zip(raw, ref):
    assert a["image"].dtype == np.uint8 and a["image"].shape == (16, 20, 20, channels)
    np.testing.assert_array_equal(a["label"], b["label"])
    got = to_float(a)
    assert got["image"].dtype == np.float32 and set(got) == {"image", "label"}
    np.testing.assert_array_equal(np.asarray(got["image"]), b["image"])  # bit-identical
  # all 256 levels, through jit, against the host formula
  levels = {"image": np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)}
  host = levels["image"].astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)
  got = np.asarray(to_float(levels)["image"])
  np.testing.assert_array_equal(got, host)
  assert got[0, 0, 0, 0] == -1.0 and got[0, -1, -1, 0] == 1.0 and got.dtype == np.float32
  # float images and dicts without images pass through
  assert data.to_float(ref[0]) is ref[0]
  assert data.to_float({"label": ref[0]["label"]})["label"] is ref[0]["label"]
  with pytest.raises(ValueError, match="image_dtype"):
    data.make_iterator(cfg, 16, seed=0, image_dtype="float16")


# ----------------------------------------------------------------------------- folder

COLORS = {  # file -> (mode, solid colour as RGB)
    "a/red.png": (255, 0, 0),
    "a/b/green.JPG": (0, 255, 0),
    "a/b/c/blue.jpeg": (0, 0, 255),
    "gray.png": (128, 128, 128),
    "rgba.PNG": (200, 100, 50),
    "palette.bmp": (10, 220, 30),
    "x/yellow.webp": (250, 250, 0),
}


def _make_folder(root):
  for rel, rgb in COLORS.items():
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if rel == "gray.png":
      img = Image.new("L", (40, 30), rgb[0])
    elif rel == "rgba.PNG":
      img = Image.new("RGBA", (30, 40), rgb + (128,))
    elif rel == "palette.bmp":
      img = Image.new("RGB", (24, 24), rgb).convert("P")
    else:
      img = Image.new("RGB", (48, 36), rgb)
    if rel.lower().endswith((".jpg", ".jpeg", ".webp")):
      img.save(p, quality=100)
    else:
      img.save(p)
  (root / "a" / "broken.png").write_bytes(np.random.default_rng(0).bytes(500))
  (root / "notes.txt").write_text("not an image")
  return len(COLORS) + 1  # files with image extensions, the broken one included


def _color_index(batch_images):
  """Nearest entry of COLORS for each (solid) RGB image in the batch."""
  rgb = (batch_images.mean(axis=(1, 2)) + 1.0) * 127.5
  table = np.asarray(list(COLORS.values()), np.float64)
  return np.argmin(((rgb[:, None, :] - table[None]) ** 2).sum(-1), axis=1), rgb


def test_folder_source(tmp_path, caplog):
  n_files = _make_folder(tmp_path)
  cfg = _cfg(name="folder", path=str(tmp_path), resolution=16, channels=3)
  info = data.dataset_info(cfg)
  assert info == {
      "num_examples": n_files,
      "resolution": 16,
      "channels": 3,
      "num_classes": 0,
      "source": "folder",
  }
  assert data.list_image_files(str(tmp_path))[0] == os.path.join(
      "a", "b", "c", "blue.jpeg"
  )
  with caplog.at_level(logging.WARNING):
    it = data.make_iterator(cfg, n_files, seed=0)  # one batch = one epoch
    batches = [next(it) for _ in range(3)]
  assert it.skipped == 3  # the broken file once per epoch
  assert any("broken.png" in r.getMessage() for r in caplog.records)
  for b in batches:
    assert b["image"].shape == (n_files, 16, 16, 3) and b["image"].dtype == np.float32
    np.testing.assert_array_equal(b["label"], 0)
    which, rgb = _color_index(b["image"])
    # every readable image appears once, one of them twice (it replaced the broken file)
    counts = np.bincount(which, minlength=len(COLORS))
    assert counts.min() == 1 and counts.sum() == n_files
    assert np.abs(rgb - np.asarray(list(COLORS.values()))[which]).max() < 3
  names = list(COLORS)
  gray = [
      b["image"][i]
      for b in batches
      for i in np.where(_color_index(b["image"])[0] == names.index("gray.png"))[0]
  ]
  assert all(
      np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
      for g in gray
  )
  # the replacement is the next readable index: broken.png sorts just before red.png
  files = data.list_image_files(str(tmp_path))
  assert files[files.index(os.path.join("a", "broken.png")) + 1] == os.path.join(
      "a", "red.png"
  )
  for b in batches:
    assert np.bincount(_color_index(b["image"])[0])[names.index("a/red.png")] == 2
  # deterministic, resumable, thread-count independent
  again = _take(
      data.make_iterator(
          ml_collections.ConfigDict({**cfg.to_dict(), "num_threads": 0}),
          n_files,
          seed=0,
          start_step=1,
      ),
      2,
  )
  for a, b in zip(batches[1:], again):
    np.testing.assert_array_equal(a["image"], b["image"])
  it.close()


def test_folder_grayscale_output_and_center_crop(tmp_path):
  # 60x20 image: red 20-px bands left and right of a green centre square
  arr = np.zeros((20, 60, 3), np.uint8)
  arr[:, :20] = (255, 0, 0)
  arr[:, 20:40] = (0, 255, 0)
  arr[:, 40:] = (255, 0, 0)
  Image.fromarray(arr).save(tmp_path / "wide.png")
  rgb = _take(
      data.make_iterator(
          _cfg(name="folder", path=str(tmp_path), resolution=8, channels=3), 2, seed=0
      ),
      1,
  )[0]["image"]
  np.testing.assert_allclose(rgb[..., 1], 1.0)  # only the green centre survives the crop
  np.testing.assert_allclose(rgb[..., 0], -1.0)
  gray = _take(
      data.make_iterator(
          _cfg(name="folder", path=str(tmp_path), resolution=8, channels=1), 2, seed=0
      ),
      1,
  )[0]["image"]
  assert gray.shape == (2, 8, 8, 1)
  luma = round(0.587 * 255)  # PIL's ITU-R 601-2 luma of pure green
  np.testing.assert_allclose((gray + 1) * 127.5, luma, atol=1e-3)
  # explicit center_crop: 10-px centre of the green square
  small = _take(
      data.make_iterator(
          _cfg(
              name="folder", path=str(tmp_path), resolution=4, channels=3, center_crop=10
          ),
          1,
          seed=0,
      ),
      1,
  )[0]["image"]
  np.testing.assert_allclose(small[..., 1], 1.0)


def test_folder_errors(tmp_path):
  with pytest.raises(DataError, match="does not exist") as e:
    data.make_iterator(_cfg(name="folder", path=str(tmp_path / "missing")), 4, seed=0)
  assert str(tmp_path / "missing") in str(e.value)
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
  with pytest.raises(DataError, match="contains no images"):
    data.dataset_info(_cfg(name="folder", path=str(tmp_path / "empty")))
  with pytest.raises(DataError, match="needs data.path"):
    data.make_iterator(_cfg(name="folder", path=""), 4, seed=0)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
  it = data.make_iterator(_cfg(name="folder", path=str(tmp_path / "bad")), 2, seed=0)
  with pytest.raises(DataError, match="none of its 1 images could be read"):
    next(it)
  it.close()
  with pytest.raises(DataError, match="data.channels"):
    data.make_iterator(_cfg(name="folder", path=str(tmp_path), channels=2), 4, seed=0)
  with pytest.raises(DataError, match="data.name"):
    data.dataset_info(_cfg(name="cifar"))


def test_folder_worker_processes_match_in_process(tmp_path):
  n_files = _make_folder(tmp_path)
  base = dict(name="folder", path=str(tmp_path), resolution=8, channels=3)
  ref_it = data.make_iterator(_cfg(**base), 4, seed=5)
  ref = [next(ref_it) for _ in range(2 * n_files)]  # 8 epochs
  mp_it = data.make_iterator(_cfg(**base, num_workers=2), 4, seed=5)
  got = [next(mp_it) for _ in range(2 * n_files)]
  for a, b in zip(ref, got):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert mp_it.skipped == ref_it.skipped == 8
  mp_it.close()
  ref_it.close()


# ----------------------------------------------------------------------------- tfds


@pytest.mark.parametrize("name,source", [("mnist", "auto"), ("fashion_mnist", "tfds")])
def test_tfds_mock_without_tensorflow(tmp_path, name, source):
  tfds = pytest.importorskip("tensorflow_datasets")
  # mnist: no IDX files in path -> tfds with path as data_dir; fashion_mnist: tfds on request
  cfg = _cfg(name=name, source=source, path=str(tmp_path), resolution=32, channels=3)
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    info = data.dataset_info(cfg)
    assert info == {
        "num_examples": 20,
        "resolution": 32,
        "channels": 3,
        "num_classes": 10,
        "source": "tfds",
    }
    fresh = _take(data.make_iterator(cfg, 8, seed=0), 6)
    resumed = _take(data.make_iterator(cfg, 8, seed=0, start_step=4), 2)
    src = tfds.data_source(name, split="train")
    raw = np.stack([src[i]["image"] for i in range(20)])
    labels = np.asarray([src[i]["label"] for i in range(20)])
  for b in fresh:
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and set(b["label"]) <= set(range(10))
    assert -1 <= b["image"].min() and b["image"].max() <= 1
    np.testing.assert_array_equal(b["image"][..., 0], b["image"][..., 2])
  for a, b in zip(fresh[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  # the first batch holds the examples of the schedule, with their own labels
  idx = data.batch_indices(20, 0, 0, 8, 0, 8)
  np.testing.assert_array_equal(fresh[0]["label"], labels[idx])
  expect = data.resize_uint8(raw[idx, ..., 0], 32).astype(np.float32) / 127.5 - 1
  np.testing.assert_allclose(fresh[0]["image"][..., 0], expect, atol=1e-6)
  assert "tensorflow" not in sys.modules


def test_tfds_celeb_a_mock_center_crop(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = ml_collections.ConfigDict(
      dict(name="celeb_a", path=str(tmp_path), resolution=16, channels=3)
  )
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    b = _take(data.make_iterator(cfg, 4, seed=0), 1)[0]
    src = tfds.data_source("celeb_a", split="train")
    idx = data.batch_indices(6, 0, 0, 4, 0, 4)
    raw = src[int(idx[0])]["image"]  # 218 x 178 x 3
  h, w = raw.shape[:2]
  top, left = (h - 108) // 2, (w - 108) // 2
  expect = (
      Image.fromarray(raw)
      .crop((left, top, left + 108, top + 108))
      .resize((16, 16), Image.BICUBIC)
  )
  np.testing.assert_allclose(
      b["image"][0], np.asarray(expect, np.float32) / 127.5 - 1, atol=1e-6
  )
  np.testing.assert_array_equal(b["label"], 0)


def test_tfds_cifar10_mock_rgb_with_labels(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = _cfg(name="cifar10", path=str(tmp_path), resolution=32, channels=3, split="test")
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    assert data.dataset_info(cfg) == {
        "num_examples": 12,
        "resolution": 32,
        "channels": 3,
        "num_classes": 10,
        "source": "tfds",
    }
    b = _take(data.make_iterator(cfg, 8, seed=0), 1)[0]
    gray = _take(
        data.make_iterator(_cfg(**{**cfg.to_dict(), "channels": 1}), 8, seed=0), 1
    )[0]
    src = tfds.data_source("cifar10", split="test")
    idx = data.batch_indices(12, 0, 0, 8, 0, 8)
    raw = np.stack([src[int(i)]["image"] for i in idx])
    labels = np.asarray([src[int(i)]["label"] for i in idx])
  # 32x32 RGB is read as is (no resampling), with its own labels
  np.testing.assert_allclose(b["image"], raw.astype(np.float32) / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(b["label"], labels)
  luma = np.stack([np.asarray(Image.fromarray(r).convert("L")) for r in raw])[..., None]
  np.testing.assert_allclose(
      gray["image"], luma.astype(np.float32) / 127.5 - 1, atol=1e-6
  )
  assert "tensorflow" not in sys.modules


def test_tfds_missing_data_is_a_data_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(
      DataError, match="tfds build celeb_a --file_format=array_record"
  ) as e:
    data.dataset_info(
        ml_collections.ConfigDict(
            dict(name="celeb_a", path=str(tmp_path), resolution=64, channels=3)
        )
    )
  assert "\n" not in str(e.value)
