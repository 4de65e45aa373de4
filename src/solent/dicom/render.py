"""Render a decoded frame as a consumer image (JPEG, PNG): the PS3.18 rendered resources.

Grayscale goes through the Modality LUT (rescale or LUT sequence), then the VOI window (from
the request, the instance, its functional groups, or the frame's range), MONOCHROME1 is inverted;
colour is shown as RGB. The viewport scales the result (keeping the aspect ratio) with Pillow.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

RENDERED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


class RenderError(Exception):
    """The frame cannot be rendered as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Viewport:
    width: int
    height: int
    source: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh (negative sw/sh flip)


@dataclass(frozen=True, slots=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    quality: int = 90
    window: tuple[float, float] | None = None  # centre, width
    window_function: str = "linear"
    viewport: Viewport | None = None


def _functional(ds: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """A value of a functional group macro (enhanced multi-frame), per-frame first."""
    for groups_kw, pick in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_kw)
        if not groups or pick >= len(groups):
            continue
        seq = groups[pick].get(sequence)
        if seq and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            return None
        value = value[0]
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _modality(arr: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds:
        try:
            return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        except Exception:  # a broken LUT must not stop a thumbnail: show stored values
            return arr.astype(np.float64)
    slope = _first_float(_functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first_float(
        _functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
    )
    out = arr.astype(np.float64)
    if slope is not None:
        out = out * slope
    if intercept is not None:
        out = out + intercept
    return out


def _window(
    ds: Dataset, index: int, values: np.ndarray, opts: RenderOptions
) -> tuple[float, float]:
    if opts.window is not None:
        return opts.window
    centre = _first_float(ds.get("WindowCenter"))
    width = _first_float(ds.get("WindowWidth"))
    if centre is None or width is None:
        centre = _first_float(_functional(ds, index, "FrameVOILUTSequence", "WindowCenter"))
        width = _first_float(_functional(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    if centre is None or width is None or width <= 0:
        lo, hi = float(np.min(values)), float(np.max(values))
        return (lo + hi) / 2, max(hi - lo, 1.0)
    return centre, width


def _to_8bit_gray(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    if function == "sigmoid":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - centre) / max(width, 1e-6)))
    elif function == "linear-exact":
        out = ((values - centre) / max(width, 1e-6) + 0.5) * 255.0
    else:  # linear, PS3.3 C.11.2.1.2.1
        out = ((values - (centre - 0.5)) / max(width - 1.0, 1e-6) + 0.5) * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def to_display(arr: np.ndarray, ds: Dataset, index: int, opts: RenderOptions) -> np.ndarray:
    """An 8-bit grayscale (H, W) or RGB (H, W, 3) array ready to encode."""
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    bits = int(ds.get("BitsStored", 16) or 16)
    if pi == "PALETTE COLOR":
        try:
            arr = np.asarray(apply_color_lut(arr, ds))
        except Exception as exc:
            raise RenderError(f"the palette colour lookup table is unusable: {exc}") from exc
        # The colours are as wide as the table's entries (its descriptor's third value, 8 or
        # 16), not as the stored indices: 16-bit tables of 8-bit images rendered all white.
        bits = 16 if arr.dtype.itemsize > 1 else 8
    if arr.ndim == 3:  # colour: already RGB after decoding
        if arr.dtype != np.uint8:
            arr = np.clip(arr.astype(np.float64) * 255.0 / ((1 << bits) - 1), 0, 255)
        return arr.astype(np.uint8)
    values = _modality(arr, ds, index)
    centre, width = _window(ds, index, values, opts)
    out = _to_8bit_gray(values, centre, width, opts.window_function)
    if pi == "MONOCHROME1":
        out = 255 - out
    return out


def _apply_viewport(img: Image.Image, viewport: Viewport | None) -> Image.Image:
    if viewport is None:
        return img
    if viewport.source is not None:
        sx, sy, sw, sh = viewport.source
        sw = sw or img.width - sx
        sh = sh or img.height - sy
        # The region is clipped to the image: PIL pads a crop beyond it with black, so a
        # region of 100000 x 100000 pixels allocated that much (or failed as a "bomb").
        left, top = max(0, min(sx, sx + sw)), max(0, min(sy, sy + sh))
        right = min(img.width, max(sx, sx + sw))
        bottom = min(img.height, max(sy, sy + sh))
        if right <= left or bottom <= top:
            raise RenderError(
                f"the viewport's source region ({sx},{sy},{sw},{sh}) lies outside the "
                f"{img.width}x{img.height} image"
            )
        img = img.crop((left, top, right, bottom))
        if sw < 0:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / img.width, viewport.height / img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)
    return img


def encode_display(display: np.ndarray, opts: RenderOptions) -> bytes:
    fmt = RENDERED_TYPES.get(opts.media_type)
    if fmt is None:
        raise RenderError(f"cannot render as {opts.media_type}; use image/jpeg or image/png")
    img = _apply_viewport(Image.fromarray(display), opts.viewport)
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, fmt, quality=max(1, min(100, opts.quality)))
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def render_frame(arr: np.ndarray, ds: Dataset, index: int, opts: RenderOptions) -> bytes:
    """Render one decoded frame of the instance described by ``ds``."""
    return encode_display(to_display(arr, ds, index, opts), opts)
