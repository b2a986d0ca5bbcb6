"""Pixel operations shared by the sources: PIL mode conversion, centre crop and resize.

Every source turns its images into the output size here, so the IDX, folder, tfds and
prepared paths agree pixel for pixel. Pure functions of PIL images and uint8 arrays.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
from PIL import Image

RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def to_mode(img: Image.Image, channels: int) -> Image.Image:
  """Converts any PIL image to 'L' (channels=1) or 'RGB' (channels=3)."""
  if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grayscale
    arr = np.asarray(img).astype(np.float64)
    peak = arr.max(initial=0.0)
    if img.mode.startswith("I;16") or peak > 255:
      arr = arr * (255.0 / 65535.0)
    elif img.mode == "F" and peak <= 1.0:
      arr = arr * 255.0
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
  target = "L" if channels == 1 else "RGB"
  if img.mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")  # avoids PIL's warning; alpha is then dropped below
  return img if img.mode == target else img.convert(target)


def fit(
    img: Image.Image, resolution: int, center_crop: int, resample: int
) -> Image.Image:
  """Optional centre crop, then the centred min(h, w) square resized to resolution."""
  w, h = img.size
  left, top, right, bottom = 0, 0, w, h
  if center_crop > 0:
    c = min(center_crop, w, h)
    left, top = (w - c) // 2, (h - c) // 2
    right, bottom = left + c, top + c
  bw, bh = right - left, bottom - top
  s = min(bw, bh)
  left, top = left + (bw - s) // 2, top + (bh - s) // 2
  box = (left, top, left + s, top + s)
  if box != (0, 0, w, h):
    # Crop first: PIL's resize(box=...) would filter across the box edge.
    img = img.crop(box)
  if s == resolution:
    return img
  return img.resize((resolution, resolution), resample=resample)


def pil_to_array(img: Image.Image) -> np.ndarray:
  """uint8 [H, W, C] pixels of an 'L' or 'RGB' image."""
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def _resize_rows(images: np.ndarray, width: int, resample: int) -> np.ndarray:
  """One PIL horizontal pass, uint8 [N, H, W] -> [N, H, width], on one tall image."""
  n, h, w = images.shape
  tall = Image.fromarray(np.ascontiguousarray(images).reshape(n * h, w), "L")
  return np.asarray(tall.resize((width, n * h), resample)).reshape(n, h, width)


def resize_uint8(
    images: np.ndarray, resolution: int, resample: int = Image.BILINEAR
) -> np.ndarray:
  """uint8 [N, H, W] -> [N, R, R], bit-identical to per-image PIL ``resize``.

  PIL resamples separably, so each pass runs on the images stacked into one tall
  image (little Python overhead), in chunks on a thread pool (PIL releases the GIL).
  """
  n, h, w = images.shape
  if h == resolution and w == resolution:
    return images

  def one(chunk):
    rows = _resize_rows(chunk, resolution, resample)  # [m, h, R]
    cols = _resize_rows(rows.transpose(0, 2, 1), resolution, resample)  # [m, R(w), R(h)]
    return cols.transpose(0, 2, 1)

  chunks = [images[i : i + 4096] for i in range(0, n, 4096)]
  workers = min(len(chunks), os.cpu_count() or 1)
  if workers <= 1:
    return np.concatenate([one(c) for c in chunks]) if chunks else images.copy()
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return np.concatenate(list(pool.map(one, chunks)))
