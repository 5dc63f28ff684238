"""Paired augmentation and evaluation views: sampling, crops, colour, decoding.

Works on one encoded example (``records.EncodedExample`` or any mapping with
'clean' / 'foggy' lists of encoded frames): only the frames a clip needs are
decoded, with PIL.

Training (``make_train_pair``):

* TSN sampling: the clip is cut into ``num_frames`` equal segments and one frame
  is drawn uniformly at random from each.
* ActionCLIP-style augmentation: multi-scale crop (side scales 1, .875, .75, .66 of
  the short side, aspect distortion at most one scale step, offsets on a 5-point
  grid), resize to ``image_size``, horizontal flip (p=.5; the label of a class
  whose mirror image is another class is swapped, e.g. sidestep left / right, see
  ``flip_table`` and ``config.data.augment.flip_swap``), colour jitter (p=.8:
  brightness .4, contrast .4, saturation .2, hue .1, in random order), grayscale
  (p=.2). One draw of every parameter (frame indices, crop box, flip, jitter
  factors and order, grayscale) per pair, applied to BOTH streams, so frame i of
  the foggy clip still shows frame i of the clean clip. All colour operations are
  per-pixel functions (contrast pivots on mid-grey 0.5 rather than the image mean
  as torchvision does, so the clean and foggy frames get the same function).
* CLIP normalisation: (x / 255 - IMAGE_MEAN) / IMAGE_STD, the constants of
  ``models.clip``.

Simulated fog (``data.train_sim_fog='homogeneous'``, Table 5b's "clean + sim." row): the
foggy stream of a training pair is replaced by homogeneous ASM fog
(``tfds_fogact.fog.apply_fog`` with ``heterogeneous=False`` and its default image-space
depth) of the cropped clean frames, at the example's own fog level, with a fog seed drawn
from the sample's generator (deterministic per sample); the real foggy frames are not read.

Evaluation (``make_eval_views``): one stream only, the foggy one by default (the clean
frames are never decoded; ``stream='clean'`` reads only the clean ones), views = ``num_clips`` temporal clips x ``num_crops`` spatial crops. Clip
c samples each segment at fraction (c + .5) / num_clips (c = 0 of 1: the segment
centre); frames are resized so the short side is ``image_size`` and cropped at
``num_crops`` positions evenly spaced along the long side (1: centre; 3: left,
centre, right).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Optional
from typing import Sequence

import numpy as np
from PIL import Image

from fognet_jax import pixels
from fognet_jax.models import clip as clip_lib
from tfds_fogact import common
from tfds_fogact import fog as fog_lib

STREAMS = ('foggy', 'clean')  # config.eval.stream
SIM_FOG = (None, 'homogeneous')  # config.data.train_sim_fog


def train_frame_indices(
  num_available: int, num_frames: int, rng: np.random.Generator
) -> np.ndarray:
  """TSN training sampling: one uniformly random frame per equal segment."""
  if num_available < 1:
    raise ValueError('clip has no frames')
  edges = np.linspace(0, num_available, num_frames + 1)
  idx = np.floor(edges[:-1] + rng.uniform(size=num_frames) * (edges[1:] - edges[:-1])).astype(
    np.int64
  )
  return np.clip(idx, 0, num_available - 1)


def eval_frame_indices(
  num_available: int, num_frames: int, clip: int = 0, num_clips: int = 1
) -> np.ndarray:
  """TSN test sampling: frame at fraction (clip + .5) / num_clips of every segment."""
  if num_available < 1:
    raise ValueError('clip has no frames')
  seg = num_available / num_frames
  idx = np.floor(seg * np.arange(num_frames) + seg * (clip + 0.5) / num_clips).astype(np.int64)
  return np.clip(idx, 0, num_available - 1)


def multiscale_crop_box(
  height: int, width: int, rng: np.random.Generator, scales: Sequence[float], max_distort: int = 1
) -> tuple[int, int, int, int]:
  """ActionCLIP / TSN multi-scale crop: (left, top, right, bottom) in pixels."""
  base = min(height, width)
  sizes = [int(base * s) for s in scales]
  pairs = [
    (w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort
  ]
  cw, ch = pairs[rng.integers(len(pairs))]
  cw, ch = max(1, min(cw, width)), max(1, min(ch, height))
  sx, sy = (width - cw) // 4, (height - ch) // 4
  grid = [(0, 0), (4 * sx, 0), (0, 4 * sy), (4 * sx, 4 * sy), (2 * sx, 2 * sy)]
  x0, y0 = grid[rng.integers(len(grid))]
  return x0, y0, x0 + cw, y0 + ch


def eval_crop_boxes(
  height: int, width: int, num_crops: int
) -> list[tuple[float, float, float, float]]:
  """Square crops of side = the short side, evenly spaced along the long side."""
  side = min(height, width)
  span = max(height, width) - side
  pos = [span / 2] if num_crops == 1 else list(np.linspace(0, span, num_crops))
  if width >= height:
    return [(p, 0.0, p + side, float(side)) for p in pos]
  return [(0.0, p, float(side), p + side) for p in pos]


@dataclasses.dataclass(frozen=True)
class ColorJitter:
  """Drawn colour-jitter parameters (identity when ``apply`` is False)."""

  apply: bool = False
  brightness: float = 1.0
  contrast: float = 1.0
  saturation: float = 1.0
  hue: float = 0.0
  order: tuple[int, ...] = (0, 1, 2, 3)
  grayscale: bool = False


def sample_color_jitter(rng: np.random.Generator, aug) -> ColorJitter:
  apply = bool(rng.uniform() < aug.color_jitter_prob)
  b = rng.uniform(1 - aug.brightness, 1 + aug.brightness)
  c = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
  s = rng.uniform(1 - aug.saturation, 1 + aug.saturation)
  h = rng.uniform(-aug.hue, aug.hue)
  order = tuple(int(x) for x in rng.permutation(4))
  gray = bool(rng.uniform() < aug.grayscale_prob)
  return ColorJitter(apply, float(b), float(c), float(s), float(h), order, gray)


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)
_RGB2YIQ = np.array(
  [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def _hue_matrix(hue: float) -> np.ndarray:
  """RGB -> RGB rotation of the hue by `hue` turns (a rotation of the I/Q plane of YIQ)."""
  a = 2 * np.pi * hue
  rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], np.float32)
  return _YIQ2RGB @ rot @ _RGB2YIQ


def apply_color(x: np.ndarray, cj: ColorJitter) -> np.ndarray:
  """Per-pixel colour jitter + grayscale on float frames in [0, 1], (..., 3)."""
  if cj.apply:
    for op in cj.order:
      if op == 0:
        x = x * np.float32(cj.brightness)
      elif op == 1:
        x = (x - np.float32(0.5)) * np.float32(cj.contrast) + np.float32(0.5)
      elif op == 2:
        g = (x @ _GRAY)[..., None]
        x = g + (x - g) * np.float32(cj.saturation)
      else:
        x = x @ _hue_matrix(cj.hue).T
      x = np.clip(x, 0.0, 1.0)
  if cj.grayscale:
    x = np.repeat((x @ _GRAY)[..., None], 3, axis=-1)
  return x


# ----------------------------------------------------------------------------- decoding


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
  """(h, w) from a JPEG's start-of-frame marker, or None if `data` is not a JPEG that says."""
  if data[:2] != b'\xff\xd8':
    return None
  i, n = 2, len(data)
  while i + 9 <= n:
    if data[i] != 0xFF:
      return None
    m = data[i + 1]
    if m == 0xFF:  # fill byte
      i += 1
    elif 0xD0 <= m <= 0xD9 or m == 0x01:  # markers without a length
      i += 2
    elif 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):  # SOF0..SOF15
      h, w = int.from_bytes(data[i + 5 : i + 7], 'big'), int.from_bytes(data[i + 7 : i + 9], 'big')
      return (h, w) if h and w else None
    else:
      i += 2 + int.from_bytes(data[i + 2 : i + 4], 'big')
  return None


def _decode(data: bytes) -> Image.Image:
  """One encoded frame as an RGB image.

  A JPEG goes straight to PIL's JPEG decoder at the size its start-of-frame marker gives: the
  same decoder and pixels as ``Image.open``, without its marker parsing and loading in
  Python, which hold the GIL (about a third of the GIL time of a training pair, see
  docs/perf_notes.md "Worker processes"). Other formats, and JPEGs that decoder refuses,
  go through ``Image.open``.
  """
  hw = _jpeg_size(data)
  if hw is not None:
    try:
      return Image.frombytes('RGB', (hw[1], hw[0]), data, 'jpeg', 'RGB', '')
    except (ValueError, OSError):
      pass
  with Image.open(io.BytesIO(data)) as im:
    return im.convert('RGB')


def _decode_crop(data: bytes, box, size: int, flip: bool) -> np.ndarray:
  """Decodes one frame, crops `box` (l, t, r, b) and resizes to (size, size)."""
  out = _decode(data).resize((size, size), Image.BILINEAR, box=tuple(float(v) for v in box))
  if flip:  # in PIL: NumPy's copy of a reversed (W, 3) view runs element by element, ~10x slower
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(out)


def _frame_size(data: bytes) -> tuple[int, int]:
  hw = _jpeg_size(data)
  if hw is not None:
    return hw
  with Image.open(io.BytesIO(data)) as im:
    return im.height, im.width


def normalize(frames_uint8_or_unit: np.ndarray, already_unit: bool = False) -> np.ndarray:
  """CLIP normalisation of uint8 frames (or floats in [0, 1] when already_unit)."""
  x = frames_uint8_or_unit.astype(np.float32)
  if not already_unit:
    x = x * np.float32(1 / 255)
  return (x - np.asarray(clip_lib.IMAGE_MEAN, np.float32)) / np.asarray(
    clip_lib.IMAGE_STD, np.float32
  )


def sample_train_pair(
  example, data_cfg, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, ColorJitter, bool]:
  """(clean, foggy) uint8 (T, S, S, 3) frames, sampled, cropped, resized and flipped, with the
  pair's drawn colour jitter (not applied) and whether it was flipped.

  Draws from `rng` exactly what ``make_train_pair`` draws, in the same order.
  """
  sim = data_cfg.get('train_sim_fog')  # one of SIM_FOG (config_lib.validate_data)
  clean = example['clean']
  foggy = clean if sim else example['foggy']
  n = min(len(clean), len(foggy))
  t_idx = train_frame_indices(n, data_cfg.num_frames, rng)
  size = data_cfg.image_size
  h, w = _frame_size(foggy[int(t_idx[0])])
  aug = data_cfg.augment
  if aug.enabled:
    box = multiscale_crop_box(h, w, rng, tuple(aug.scales), aug.max_distort)
    flip = bool(aug.flip and rng.uniform() < 0.5)
    cj = sample_color_jitter(rng, aug)
  else:
    box, flip, cj = eval_crop_boxes(h, w, 1)[0], False, ColorJitter()
  clean_u8 = np.stack([_decode_crop(clean[int(i)], box, size, flip) for i in t_idx])
  if sim:
    fog_seed = int(rng.integers(2**31))
    foggy_u8 = fog_lib.apply_fog(
      clean_u8, intensity=_fog_level(example), seed=fog_seed, heterogeneous=False
    )
  else:
    foggy_u8 = np.stack([_decode_crop(foggy[int(i)], box, size, flip) for i in t_idx])
  return clean_u8, foggy_u8, cj, flip


def make_train_pair(example, data_cfg, rng: np.random.Generator, return_flip: bool = False):
  """Augmented (clean, foggy), each (T, S, S, 3) float32 CLIP-normalised, from an encoded pair.

  With `return_flip`, also returns whether the pair was flipped horizontally.
  """
  clean_u8, foggy_u8, cj, flip = sample_train_pair(example, data_cfg, rng)
  out = [color_and_normalize(frames, cj) for frames in (clean_u8, foggy_u8)]
  if return_flip:
    return out[0], out[1], flip
  return out[0], out[1]


def color_and_normalize(frames: np.ndarray, cj: ColorJitter) -> np.ndarray:
  """uint8 frames (..., 3) -> float32 model input on the host: `cj`, then CLIP normalisation."""
  return normalize(
    apply_color(frames.astype(np.float32) * np.float32(1 / 255), cj), already_unit=True
  )


def color_affines(cj: ColorJitter) -> np.ndarray:
  """`cj` followed by CLIP normalisation as the (pixels.COLOR_STEPS, 3, 4) affine chain that
  ``pixels.apply_color`` runs on the device; equal to ``color_and_normalize(x, cj)``."""
  out = pixels.identity_chain()
  eye = np.eye(3, dtype=np.float64)
  if cj.apply:
    for k, op in enumerate(cj.order):
      a, b = eye, np.zeros(3)
      if op == 0:
        a = cj.brightness * eye
      elif op == 1:
        a, b = cj.contrast * eye, np.full(3, 0.5 * (1 - cj.contrast))
      elif op == 2:
        a = cj.saturation * eye + (1 - cj.saturation) * np.outer(np.ones(3), _GRAY)
      else:
        a = _hue_matrix(cj.hue)
      out[k, :, :3], out[k, :, 3] = a, b
  if cj.grayscale:
    out[-1, :, :3] = out[-1, :, :3] @ np.outer(np.ones(3), _GRAY)
  return out


def _fog_level(example) -> str:
  """The example's fog level name ('light' / 'dense'); the stored feature is a class id."""
  level = example['fog']
  return level if isinstance(level, str) else common.FOG_LEVELS[int(level)]


def flip_table(data_cfg, class_names: Optional[Sequence[str]], default_pairs=()) -> np.ndarray:
  """Label map applied when a clip is flipped: int array (num_classes,) or (0,) if unknown.

  `augment.flip_swap`: 'auto' uses `default_pairs` (the builder's MIRROR_CLASS_PAIRS),
  '' none, else comma-separated 'a:b' pairs of class names or ids.
  """
  spec = data_cfg.augment.get('flip_swap', 'auto')
  if spec == 'auto':
    pairs = [tuple(p) for p in default_pairs]
  elif not spec:
    pairs = []
  else:
    pairs = []
    for item in str(spec).split(','):
      a, sep, b = item.strip().partition(':')
      if not sep:
        raise ValueError(f"config.data.augment.flip_swap: {item!r} is not a 'class_a:class_b' pair")
      pairs.append((a.strip(), b.strip()))
  names = list(class_names) if class_names is not None else None

  def to_id(x):
    if isinstance(x, (int, np.integer)) or (isinstance(x, str) and x.isdigit()):
      return int(x)
    if names is None or x not in names:
      raise ValueError(f'config.data.augment.flip_swap: unknown class {x!r}')
    return names.index(x)

  ids = [(to_id(a), to_id(b)) for a, b in pairs]
  size = len(names) if names is not None else 1 + max([max(p) for p in ids], default=-1)
  table = np.arange(size)
  for a, b in ids:
    if not (0 <= a < size and 0 <= b < size):
      raise ValueError(f'config.data.augment.flip_swap: class id out of range in {(a, b)}')
    table[a], table[b] = b, a
  return table


def make_eval_views(example, data_cfg, stream: str = 'foggy', uint8: bool = False) -> np.ndarray:
  """(V, T, S, S, 3) CLIP-normalised views of one stream; reads only ``example[stream]``.

  With `uint8`, the views are returned as uint8 pixels, for ``pixels.normalize`` on the device.
  """
  foggy = example[stream]
  n = len(foggy)
  size = data_cfg.image_size
  h, w = _frame_size(foggy[0])
  # "resize the short side to `size`, then crop size x size" as boxes in source pixels
  boxes = eval_crop_boxes(h, w, data_cfg.num_crops)
  views = []
  cache: dict[int, Image.Image] = {}
  for c in range(data_cfg.num_clips):
    idx = eval_frame_indices(n, data_cfg.num_frames, c, data_cfg.num_clips)
    for box in boxes:
      frames = []
      for i in idx:
        i = int(i)
        if i not in cache:
          cache[i] = _decode(foggy[i])
        frames.append(np.asarray(cache[i].resize((size, size), Image.BILINEAR, box=box)))
      views.append(np.stack(frames) if uint8 else normalize(np.stack(frames)))
  return np.stack(views)
