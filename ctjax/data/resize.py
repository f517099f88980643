"""HU slices resized to the model's image size: the one resize of the cache, the reports, the
predictions and the served model (`ctjax.inference.serving`), in a module that imports numpy
only (Pillow when resizing), so that serving needs none of the data pipeline.

Pillow on float32 HU ("F" mode, C speed, ~0.3 ms a 512² slice): area resampling (Image.BOX:
each output pixel is the area-weighted mean of the input pixels it covers) when shrinking,
bilinear when enlarging; then rounding to int16 clipped to [HU_MIN, HU_MAX]. Non-square images
are resized to a square.
"""

from __future__ import annotations

import numpy as np

HU_MIN, HU_MAX = -1024, 3071


def resize_hu(hu: np.ndarray, size: int) -> np.ndarray:
  """float HU [S, H, W] → int16 [S, size, size] (Pillow bilinear/antialiased; see docstring)."""
  hu = np.asarray(hu, np.float32)
  s, h, w = hu.shape
  if (h, w) == (size, size):
    out = hu
  else:
    from PIL import Image
    down = size <= min(h, w)
    method = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    out = np.empty((s, size, size), np.float32)
    for i in range(s):
      img = Image.fromarray(hu[i], mode="F")
      out[i] = np.asarray(img.resize((size, size), method), np.float32)
  return np.clip(np.rint(out), HU_MIN, HU_MAX).astype(np.int16)
