"""Small test data shared by the test modules (importable: pytest puts tests/ on the path)."""

import numpy as np
from PIL import Image


def write_blob_pngs(root, n: int, seed: int = 0) -> None:
  """``n`` non-square (20x24) RGB PNGs of one soft blob each: the loaders crop and
  resize them, and the GAN sees images with structure rather than noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:20, 0:24]
  for i in range(n):
    blob = np.exp(
        -((yy - rng.uniform(5, 15)) ** 2 + (xx - rng.uniform(5, 19)) ** 2)
        / rng.uniform(4, 30)
    )
    rgb = np.stack([blob * rng.uniform(0.3, 1) for _ in range(3)], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(root / f'{i:02d}.png')
