"""CIE Lab (D65) from and to sRGB in numpy, and chroma put back on full-size lightness: the
colorize plugin and its trainer share these.

Same definitions as scikit-image's `rgb2lab`/`lab2rgb` (sRGB IEC 61966-2-1 transfer curve,
D65 reference white), written out so the plugin needs numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from imgproc import resize

_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
_WHITE = np.array([0.95047, 1.0, 1.08883])
# White-normalised matrices, float32: the per-pixel work stays in float32 (4x less memory
# traffic than float64 on a 24-megapixel scan; errors ~1e-4 in L, far below 8-bit steps).
_RGB_TO_XYZN = (_RGB_TO_XYZ / _WHITE[:, None]).T.astype(np.float32)
_XYZN_TO_RGB = (np.linalg.inv(_RGB_TO_XYZ) * _WHITE[None, :]).T.astype(np.float32)
_EPS = (6 / 29) ** 3
_KAPPA = 3 * (6 / 29) ** 2


def _linear(rgb: np.ndarray) -> np.ndarray:
    """Return linear-light values of sRGB values in [0, 1] (IEC 61966-2-1), float32."""
    rgb = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    out = np.power((rgb + np.float32(0.055)) / np.float32(1.055), np.float32(2.4))
    low = rgb <= 0.04045
    out[low] = rgb[low] / np.float32(12.92)
    return out


def _f(t: np.ndarray) -> np.ndarray:
    out = np.cbrt(t)
    low = t <= _EPS
    out[low] = t[low] / np.float32(_KAPPA) + np.float32(4 / 29)
    return out


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Return H x W x 3 Lab (L in [0, 100], a/b about [-110, 110]) of sRGB values in [0, 1]."""
    f = _f(_linear(rgb) @ _RGB_TO_XYZN)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Return sRGB in [0, 1] (out-of-gamut colours clipped) of H x W x 3 Lab values."""
    lab = np.asarray(lab, dtype=np.float32)
    fy = (lab[..., 0] + np.float32(16)) / np.float32(116)
    f = np.stack([fy + lab[..., 1] / np.float32(500), fy, fy - lab[..., 2] / np.float32(200)],
                 axis=-1)
    xyz = f * f * f
    low = f <= 6 / 29
    xyz[low] = np.float32(_KAPPA) * (f[low] - np.float32(4 / 29))
    linear = np.clip(xyz @ _XYZN_TO_RGB, 0.0, 1.0)
    rgb = np.float32(1.055) * np.power(linear, np.float32(1 / 2.4)) - np.float32(0.055)
    low = linear <= 0.0031308
    rgb[low] = linear[low] * np.float32(12.92)
    return np.clip(rgb, 0.0, 1.0)


def lightness(rgb: np.ndarray) -> np.ndarray:
    """Return the H x W L channel (0-100) of sRGB values in [0, 1] (from Y alone)."""
    y = _linear(rgb) @ _RGB_TO_XYZN[:, 1]
    return 116 * _f(y) - 16


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """Return the neutral grey sRGB image with the same lightness (a = b = 0)."""
    lab = rgb_to_lab(rgb)
    lab[..., 1:] = 0.0
    return lab_to_rgb(lab)


PredictAb = Callable[[np.ndarray], np.ndarray]


MAX_ASPECT = 8  # a thin strip is squeezed to this aspect rather than run at full length


def working_size(height: int, width: int, render_size: int) -> tuple[int, int]:
    """Return the (height, width) with the short side at render_size, aspect kept up to
    MAX_ASPECT (the long side is at most MAX_ASPECT * render_size)."""
    s = render_size / min(height, width)
    cap = MAX_ASPECT * render_size
    return min(cap, max(1, round(height * s))), min(cap, max(1, round(width * s)))


def colorize_lab(rgb: np.ndarray, predict_ab: PredictAb, *, render_size: int,
                 strength: float) -> np.ndarray:
    """Return rgb recoloured: predict_ab maps the lightness at the working size (h x w, 0-100)
    to chroma (h' x w' x 2, any h', w'), which is resized onto the full-size lightness."""
    height, width = rgb.shape[:2]
    full = lightness(rgb)[..., None]
    small = resize(full, *working_size(height, width, render_size),
                   resample=Image.Resampling.BOX)
    ab = resize(np.asarray(predict_ab(small[..., 0]), dtype=np.float32), height, width,
                resample=Image.Resampling.BICUBIC)
    return lab_to_rgb(np.concatenate([full, strength * ab], axis=2))


__all__ = ["PredictAb", "colorize_lab", "grey_of", "lab_to_rgb", "lightness", "rgb_to_lab",
           "working_size"]
