"""Paired clean/foggy video input pipeline.

Reads a prepared ``tfds_fogact`` dataset through random access (the
``as_data_source`` of its ArrayRecord copy, see ``tfds_fogact.common``), with the
records only parsed (``DeserializeMethod.DESERIALIZE_NO_DECODE``; TFDS 4.9's
``SkipDecoding`` is not supported by the NumPy decoding path): only the JPEG
frames a clip needs are decoded, with PIL, in a thread pool.

Training (``train_iterator``):

* TSN sampling: the clip is cut into ``num_frames`` equal segments and one frame
  is drawn uniformly at random from each.
* ActionCLIP-style augmentation: multi-scale crop (side scales 1, .875, .75, .66 of
  the short side, aspect distortion at most one scale step, offsets on a 5-point
  grid), resize to ``image_size``, horizontal flip (p=.5; the label of a class
  whose mirror image is another class is swapped, e.g. sidestep left / right, see
  ``augment.flip_swap``), colour jitter (p=.8:
  brightness .4, contrast .4, saturation .2, hue .1, in random order), grayscale
  (p=.2). One draw of every parameter (frame indices, crop box, flip, jitter
  factors and order, grayscale) per pair, applied to BOTH streams, so frame i of
  the foggy clip still shows frame i of the clean clip. All colour operations are
  per-pixel functions (contrast pivots on mid-grey 0.5 rather than the image mean
  as torchvision does, so the clean and foggy frames get the same function).
* CLIP normalisation: (x / 255 - IMAGE_MEAN) / IMAGE_STD, the constants of
  ``models.clip``.
* Determinism and resume: global sample ``g = step * B * P + process * B + j``
  (B per-process batch, P processes) is example ``perm_e[g mod N]`` of epoch
  ``e = g // N`` (``perm_e`` a permutation seeded by (seed, e)), augmented with a
  generator seeded by (seed, g). Batch i is therefore a pure function of
  (config, seed, i, process index, process count): ``start_step`` skips to it
  without replaying, and the processes of one step read disjoint examples.

Evaluation (``eval_iterator``): foggy stream only (the clean frames are never
decoded), views = ``num_clips`` temporal clips x ``num_crops`` spatial crops. Clip
c samples each segment at fraction (c + .5) / num_clips (c = 0 of 1: the segment
centre); frames are resized so the short side is ``image_size`` and cropped at
``num_crops`` positions evenly spaced along the long side (1: centre; 3: left,
centre, right). Examples are split into contiguous per-process chunks; the last
batch is padded (``mask`` False).

Subsets: ``fog`` ('light' / 'dense' / None = both, alias 'multi') and
``perspective`` (None = all, or a name / comma-separated names) filter both
splits (paper Table 5c / 5f).
"""
from __future__ import annotations

import collections
import collections.abc
import concurrent.futures
import dataclasses
import functools
import io
import json
import math
import os
from typing import Any, Iterator, Optional, Sequence

import ml_collections
import numpy as np
from PIL import Image

from fognet_jax.models import clip as clip_lib
from tfds_fogact import common


def get_config() -> ml_collections.ConfigDict:
  """The ``config.data`` block with its defaults."""
  c = ml_collections.ConfigDict()
  c.dataset = "synthetic_fog_act"     # TFDS name, optionally 'name/builder_config'
  c.data_dir = ml_collections.config_dict.placeholder(str)    # None: TFDS default
  c.manual_dir = ml_collections.config_dict.placeholder(str)  # for manual-download datasets
  c.num_frames = 8
  c.image_size = 224
  c.train_split = "train"
  c.eval_split = "test"
  c.num_clips = 1                     # eval temporal clips
  c.num_crops = 1                     # eval spatial crops (1 centre, 3 left/centre/right)
  c.fog = ml_collections.config_dict.placeholder(str)          # 'light' | 'dense' | None
  c.perspective = ml_collections.config_dict.placeholder(str)  # e.g. 'front' or 'front,back'
  c.build_if_missing = True           # build generated datasets when not prepared
  c.num_workers = 4                   # decoding threads
  c.prefetch = 2                      # batches prepared ahead
  c.augment = ml_collections.ConfigDict()
  a = c.augment
  a.enabled = True
  a.scales = (1.0, 0.875, 0.75, 0.66)
  a.max_distort = 1
  a.flip = True
  # classes a horizontal flip turns into each other (e.g. 'sidestep_left:sidestep_right,...';
  # ids '4:5' also work): 'auto' = the dataset builder's MIRROR_CLASS_PAIRS, '' = none
  a.flip_swap = "auto"
  a.color_jitter_prob = 0.8
  a.brightness = 0.4
  a.contrast = 0.4
  a.saturation = 0.2
  a.hue = 0.1
  a.grayscale_prob = 0.2
  return c


# ----------------------------------------------------------------------------- config / dataset


def _fog_filter(data_cfg) -> Optional[str]:
  fog = data_cfg.get("fog")
  if fog in (None, "", "multi", "all"):
    return None
  if fog not in common.FOG_LEVELS:
    raise ValueError(f"config.data.fog must be one of {common.FOG_LEVELS}, 'multi' or None, got {fog!r}")
  return fog


def _perspective_filter(data_cfg) -> Optional[tuple[str, ...]]:
  p = data_cfg.get("perspective")
  if p in (None, "", "all"):
    return None
  names = tuple(x.strip() for x in p.split(",")) if isinstance(p, str) else tuple(p)
  bad = [x for x in names if x not in common.PERSPECTIVES]
  if bad or not names:
    raise ValueError(f"config.data.perspective: unknown perspective(s) {bad}; use a comma-separated "
                     f"subset of {common.PERSPECTIVES} or None")
  return names


def validate(data_cfg) -> None:
  """Raises a ValueError naming the bad `config.data` key; cheap, no I/O."""
  for key in ("num_frames", "image_size", "num_clips", "num_crops", "num_workers"):
    v = data_cfg.get(key)
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"config.data.{key} must be an int >= 1, got {v!r}")
  if data_cfg.get("prefetch", 0) < 0:
    raise ValueError(f"config.data.prefetch must be >= 0, got {data_cfg.prefetch}")
  if not data_cfg.get("dataset"):
    raise ValueError("config.data.dataset is empty")
  _fog_filter(data_cfg)
  _perspective_filter(data_cfg)
  a = data_cfg.get("augment")
  if a is not None and a.get("enabled", True):
    scales = tuple(a.scales)
    if not scales or any(not 0 < s <= 1 for s in scales):
      raise ValueError(f"config.data.augment.scales must be in (0, 1], got {scales}")
    for key in ("color_jitter_prob", "grayscale_prob"):
      if not 0 <= a[key] <= 1:
        raise ValueError(f"config.data.augment.{key} must be in [0, 1], got {a[key]}")
    for key in ("brightness", "contrast", "saturation"):
      if not 0 <= a[key] < 1:
        raise ValueError(f"config.data.augment.{key} must be in [0, 1), got {a[key]}")
    if not 0 <= a.hue <= 0.5:
      raise ValueError(f"config.data.augment.hue must be in [0, 0.5], got {a.hue}")
    swap = a.get("flip_swap", "auto")
    if swap not in ("auto", "", None):
      bad = [x for x in str(swap).split(",") if x.count(":") != 1]
      if bad:
        raise ValueError(f"config.data.augment.flip_swap: {bad} are not 'class_a:class_b' pairs")


@dataclasses.dataclass
class DataInfo:
  """What the trainer needs to know about the prepared data."""

  name: str
  class_names: list[str]
  num_examples: dict[str, int]      # after the fog / perspective filters
  builder: Any = None


def _builder(data_cfg):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tfds_fogact  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (registers builders)
  try:
    return tfds.builder(data_cfg.dataset, data_dir=data_cfg.get("data_dir"))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"config.data.dataset: unknown dataset {data_cfg.dataset!r} ({e})") from e


@functools.lru_cache(maxsize=16)
def _builder_cached(dataset: str, data_dir: Optional[str]):
  cfg = ml_collections.ConfigDict({"dataset": dataset, "data_dir": data_dir})
  return _builder(cfg)


def prepare(data_cfg) -> DataInfo:
  """Validates `data_cfg`, builds the dataset if needed, and returns its :class:`DataInfo`.

  A generated dataset (``synthetic_fog_act``) is built when missing (and
  ``build_if_missing``); a manual-download dataset needs ``config.data.manual_dir``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  validate(data_cfg)
  builder = _builder_cached(data_cfg.dataset, data_cfg.get("data_dir"))
  if not builder.is_prepared():
    generated = builder.name.startswith("synthetic")
    if not data_cfg.get("build_if_missing", True):
      raise FileNotFoundError(f"config.data.dataset {data_cfg.dataset!r} is not prepared in {builder.data_dir} "
                              "and config.data.build_if_missing is False")
    manual_dir = data_cfg.get("manual_dir")
    if not generated and not manual_dir:
      raise ValueError(f"config.data.manual_dir: dataset {data_cfg.dataset!r} is not prepared in "
                       f"{builder.data_dir}; give the directory holding its videos "
                       f"(see docs/data_real.md)")
    if manual_dir and not os.path.isdir(os.path.expanduser(manual_dir)):
      raise ValueError(f"config.data.manual_dir: {manual_dir!r} is not a directory")
    dl = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir)) if manual_dir else None
    common.prepare(builder, dl)
  elif not common.has_random_access(builder):
    common.add_array_record(builder)
  for split in (data_cfg.train_split, data_cfg.eval_split):
    if split not in builder.info.splits:
      raise ValueError(f"config.data: split {split!r} not in {data_cfg.dataset!r} "
                       f"(splits: {list(builder.info.splits)})")
  num = {s: len(_indices(data_cfg, s)) for s in builder.info.splits}
  for split in (data_cfg.train_split, data_cfg.eval_split):
    if num[split] == 0:
      raise ValueError(f"config.data: no {split!r} examples left after the filters fog={data_cfg.get('fog')!r}, "
                       f"perspective={data_cfg.get('perspective')!r}")
  return DataInfo(name=data_cfg.dataset, class_names=list(builder.info.features["label"].names),
                  num_examples=num, builder=builder)


class EncodedExample(collections.abc.Mapping):
  """Lazy view of one stored example: fields are read from the parsed record on access.

  'clean' / 'foggy' are the lists of encoded JPEG frames (nothing is decoded here);
  integer features come back as int, text as str.
  """

  def __init__(self, proto):
    self._feature = proto.features.feature

  def __getitem__(self, key):
    if key not in self._feature:
      raise KeyError(key)
    f = self._feature[key]
    kind = f.WhichOneof("kind")
    if key in ("clean", "foggy"):
      return f.bytes_list.value
    if kind == "int64_list":
      return int(f.int64_list.value[0])
    if kind == "bytes_list":
      return f.bytes_list.value[0].decode("utf-8")
    return f.float_list.value[0]

  def __iter__(self):
    return iter(self._feature)

  def __len__(self):
    return len(self._feature)


class EncodedSource(collections.abc.Sequence):
  """Random access to a split's records as :class:`EncodedExample` (videos stay encoded).

  Records are only parsed (protobuf); frames are decoded by the caller, and only
  those a clip needs. A foggy-only reader never decodes the clean frames.
  """

  def __init__(self, data_source):
    self._src = data_source

  def __len__(self):
    return len(self._src)

  def __getitem__(self, index):
    return EncodedExample(self._src[int(index)])


def _source(data_cfg, split: str) -> EncodedSource:
  """Random-access source of `split` (ArrayRecord copy) with the videos left encoded."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _builder_cached(data_cfg.dataset, data_cfg.get("data_dir"))
  src = common.data_source(builder, split,
                           deserialize_method=tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE)
  return EncodedSource(src)


def _metadata(data_cfg, split: str) -> dict[str, np.ndarray]:
  """fog / perspective ids of every example of a split, cached next to the data."""
  builder = _builder_cached(data_cfg.dataset, data_cfg.get("data_dir"))
  path = os.path.join(os.fspath(builder.data_dir), f"fognet_index-{split}.json")
  if os.path.exists(path):
    with open(path) as f:
      meta = json.load(f)
  else:
    src = _source(data_cfg, split)
    meta = {"fog": [], "perspective": []}
    for i in range(len(src)):
      ex = src[i]
      meta["fog"].append(ex["fog"])
      meta["perspective"].append(ex["perspective"])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(meta, f)
    os.replace(tmp, path)
  return {k: np.asarray(v, np.int64) for k, v in meta.items()}


def _indices(data_cfg, split: str) -> np.ndarray:
  """Example indices of `split` that pass the fog / perspective filters."""
  fog = _fog_filter(data_cfg)
  persp = _perspective_filter(data_cfg)
  builder = _builder_cached(data_cfg.dataset, data_cfg.get("data_dir"))
  n = builder.info.splits[split].num_examples
  keep = np.ones(n, bool)
  if fog is not None or persp is not None:
    meta = _metadata(data_cfg, split)
    fog_names = builder.info.features["fog"].names
    persp_names = builder.info.features["perspective"].names
    if fog is not None:
      keep &= meta["fog"] == fog_names.index(fog)
    if persp is not None:
      keep &= np.isin(meta["perspective"], [persp_names.index(p) for p in persp])
  return np.nonzero(keep)[0]


# ----------------------------------------------------------------------------- sampling


def train_frame_indices(num_available: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
  """TSN training sampling: one uniformly random frame per equal segment."""
  if num_available < 1:
    raise ValueError("clip has no frames")
  edges = np.linspace(0, num_available, num_frames + 1)
  idx = np.floor(edges[:-1] + rng.uniform(size=num_frames) * (edges[1:] - edges[:-1])).astype(np.int64)
  return np.clip(idx, 0, num_available - 1)


def eval_frame_indices(num_available: int, num_frames: int, clip: int = 0, num_clips: int = 1) -> np.ndarray:
  """TSN test sampling: frame at fraction (clip + .5) / num_clips of every segment."""
  if num_available < 1:
    raise ValueError("clip has no frames")
  seg = num_available / num_frames
  idx = np.floor(seg * np.arange(num_frames) + seg * (clip + 0.5) / num_clips).astype(np.int64)
  return np.clip(idx, 0, num_available - 1)


def multiscale_crop_box(height: int, width: int, rng: np.random.Generator, scales: Sequence[float],
                        max_distort: int = 1) -> tuple[int, int, int, int]:
  """ActionCLIP / TSN multi-scale crop: (left, top, right, bottom) in pixels."""
  base = min(height, width)
  sizes = [int(base * s) for s in scales]
  pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
  cw, ch = pairs[rng.integers(len(pairs))]
  cw, ch = max(1, min(cw, width)), max(1, min(ch, height))
  sx, sy = (width - cw) // 4, (height - ch) // 4
  grid = [(0, 0), (4 * sx, 0), (0, 4 * sy), (4 * sx, 4 * sy), (2 * sx, 2 * sy)]
  x0, y0 = grid[rng.integers(len(grid))]
  return x0, y0, x0 + cw, y0 + ch


def eval_crop_boxes(height: int, width: int, num_crops: int) -> list[tuple[float, float, float, float]]:
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
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


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
        a = 2 * np.pi * cj.hue
        rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], np.float32)
        x = x @ (_YIQ2RGB @ rot @ _RGB2YIQ).T
      x = np.clip(x, 0.0, 1.0)
  if cj.grayscale:
    x = np.repeat((x @ _GRAY)[..., None], 3, axis=-1)
  return x


# ----------------------------------------------------------------------------- decoding


def _decode_crop(data: bytes, box, size: int, flip: bool) -> np.ndarray:
  """Decodes one JPEG frame, crops `box` (l, t, r, b) and resizes to (size, size)."""
  with Image.open(io.BytesIO(data)) as im:
    im = im.convert("RGB")
    out = im.resize((size, size), Image.BILINEAR, box=tuple(float(v) for v in box))
  a = np.asarray(out)
  return a[:, ::-1] if flip else a


def _frame_size(data: bytes) -> tuple[int, int]:
  with Image.open(io.BytesIO(data)) as im:
    return im.height, im.width


def normalize(frames_uint8_or_unit: np.ndarray, already_unit: bool = False) -> np.ndarray:
  """CLIP normalisation of uint8 frames (or floats in [0, 1] when already_unit)."""
  x = frames_uint8_or_unit.astype(np.float32)
  if not already_unit:
    x = x * np.float32(1 / 255)
  return (x - np.asarray(clip_lib.IMAGE_MEAN, np.float32)) / np.asarray(clip_lib.IMAGE_STD, np.float32)


def make_train_pair(example, data_cfg, rng: np.random.Generator, return_flip: bool = False):
  """Augmented (clean, foggy), each (T, S, S, 3) float32 CLIP-normalised, from an encoded pair.

  With `return_flip`, also returns whether the pair was flipped horizontally.
  """
  clean, foggy = example["clean"], example["foggy"]
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
  out = []
  for stream in (clean, foggy):
    frames = np.stack([_decode_crop(stream[int(i)], box, size, flip) for i in t_idx])
    x = apply_color(frames.astype(np.float32) * np.float32(1 / 255), cj)
    out.append(normalize(x, already_unit=True))
  if return_flip:
    return out[0], out[1], flip
  return out[0], out[1]


def flip_table(data_cfg, class_names: Optional[Sequence[str]], default_pairs=()) -> np.ndarray:
  """Label map applied when a clip is flipped: int array (num_classes,) or (0,) if unknown.

  `augment.flip_swap`: 'auto' uses `default_pairs` (the builder's MIRROR_CLASS_PAIRS),
  '' none, else comma-separated 'a:b' pairs of class names or ids.
  """
  spec = data_cfg.augment.get("flip_swap", "auto")
  if spec == "auto":
    pairs = [tuple(p) for p in default_pairs]
  elif not spec:
    pairs = []
  else:
    pairs = []
    for item in str(spec).split(","):
      a, sep, b = item.strip().partition(":")
      if not sep:
        raise ValueError(f"config.data.augment.flip_swap: {item!r} is not a 'class_a:class_b' pair")
      pairs.append((a.strip(), b.strip()))
  names = list(class_names) if class_names is not None else None

  def to_id(x):
    if isinstance(x, (int, np.integer)) or (isinstance(x, str) and x.isdigit()):
      return int(x)
    if names is None or x not in names:
      raise ValueError(f"config.data.augment.flip_swap: unknown class {x!r}")
    return names.index(x)

  ids = [(to_id(a), to_id(b)) for a, b in pairs]
  size = len(names) if names is not None else 1 + max([max(p) for p in ids], default=-1)
  table = np.arange(size)
  for a, b in ids:
    if not (0 <= a < size and 0 <= b < size):
      raise ValueError(f"config.data.augment.flip_swap: class id out of range in {(a, b)}")
    table[a], table[b] = b, a
  return table


def make_eval_views(example, data_cfg) -> np.ndarray:
  """(V, T, S, S, 3) CLIP-normalised foggy views; reads only ``example['foggy']``."""
  foggy = example["foggy"]
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
          with Image.open(io.BytesIO(foggy[i])) as im:
            cache[i] = im.convert("RGB")
        frames.append(np.asarray(cache[i].resize((size, size), Image.BILINEAR, box=box)))
      views.append(normalize(np.stack(frames)))
  return np.stack(views)


# ----------------------------------------------------------------------------- iterators


def _process(process_index, process_count):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index(), jax.process_count()
  return process_index, process_count


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 7]).permutation(n)


def train_sample_ids(num_examples: int, *, batch_size: int, seed: int, step: int,
                     process_index: int, process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """(global sample numbers g, positions into the filtered index list) of one batch."""
  g = (step * batch_size * process_count + process_index * batch_size
       + np.arange(batch_size, dtype=np.int64))
  epochs = g // num_examples
  pos = np.empty_like(g)
  for e in np.unique(epochs):
    sel = epochs == e
    pos[sel] = _epoch_permutation(seed, int(e), num_examples)[g[sel] % num_examples]
  return g, pos


def _prefetched(make_batch, batch_numbers, prefetch: int, pool):
  """Yields the batches of `batch_numbers`, submitting `prefetch` batches ahead.

  make_batch(i, pool) returns (collate, futures): per-example futures submitted to
  the thread pool and the function that stacks their results.
  """
  pending = collections.deque()
  it = iter(batch_numbers)
  done = False
  while True:
    while not done and len(pending) < prefetch + 1:
      try:
        i = next(it)
      except StopIteration:
        done = True
        break
      pending.append(make_batch(i, pool))
    if not pending:
      return
    collate, futures = pending.popleft()
    yield collate([f.result() for f in futures])


def train_iterator(data_cfg, *, batch_size: int, seed: int, start_step: int = 0,
                   process_index: Optional[int] = None, process_count: Optional[int] = None,
                   source=None) -> Iterator[dict]:
  """Infinite iterator of per-process training batches.

  Yields {'clean': (B, T, S, S, 3) float32, 'foggy': same, 'label': (B,) int32}.
  `process_index` / `process_count` default to ``jax.process_index()`` /
  ``jax.process_count()``; `source` (a sequence of examples with encoded
  'clean' / 'foggy' frame lists and 'label') replaces the dataset, for tests.
  """
  validate(data_cfg)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  pi, pc = _process(process_index, process_count)
  if source is None:
    info = prepare(data_cfg)
    source = _source(data_cfg, data_cfg.train_split)
    indices = _indices(data_cfg, data_cfg.train_split)
    swap = flip_table(data_cfg, info.class_names, getattr(type(info.builder), "MIRROR_CLASS_PAIRS", ()))
  else:
    indices = np.arange(len(source))
    swap = flip_table(data_cfg, None)
  n = len(indices)
  if n == 0:
    raise ValueError("config.data: the training split is empty after filtering")

  def one(g: int, index: int):
    ex = source[int(index)]
    rng = np.random.default_rng([seed, int(g), 13])
    clean, foggy, flipped = make_train_pair(ex, data_cfg, rng, return_flip=True)
    label = int(ex["label"])
    if flipped and label < len(swap):
      label = int(swap[label])
    return clean, foggy, label

  def collate(items):
    return {"clean": np.stack([c for c, _, _ in items]),
            "foggy": np.stack([f for _, f, _ in items]),
            "label": np.asarray([l for _, _, l in items], np.int32)}

  def make_batch(step: int, pool):
    g, pos = train_sample_ids(n, batch_size=batch_size, seed=seed, step=step,
                              process_index=pi, process_count=pc)
    return collate, [pool.submit(one, gi, indices[p]) for gi, p in zip(g, pos)]

  pool = concurrent.futures.ThreadPoolExecutor(data_cfg.num_workers)
  try:
    steps = iter(range(start_step, 1 << 62))
    yield from _prefetched(make_batch, steps, data_cfg.get("prefetch", 2), pool)
  finally:
    pool.shutdown(wait=False)


def eval_process_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Contiguous [start, stop) of the examples a process evaluates."""
  per = math.ceil(num_examples / process_count)
  return min(num_examples, process_index * per), min(num_examples, (process_index + 1) * per)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int) -> int:
  """Batches every process yields (the same on all processes)."""
  return math.ceil(math.ceil(num_examples / process_count) / batch_size)


def eval_iterator(data_cfg, *, split: Optional[str] = None, batch_size: int,
                  process_index: Optional[int] = None, process_count: Optional[int] = None,
                  source=None) -> Iterator[dict]:
  """Finite iterator of foggy-only evaluation batches.

  Yields {'foggy': (B, V, T, S, S, 3) float32, 'label': (B,) int32, 'mask': (B,) bool},
  V = num_clips * num_crops. The clean stream is never decoded.
  """
  validate(data_cfg)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  split = split or data_cfg.eval_split
  pi, pc = _process(process_index, process_count)
  if source is None:
    prepare(data_cfg)
    source = _source(data_cfg, split)
    indices = _indices(data_cfg, split)
  else:
    indices = np.arange(len(source))
  start, stop = eval_process_range(len(indices), pi, pc)
  mine = indices[start:stop]
  nb = num_eval_batches(len(indices), batch_size, pc)
  v = data_cfg.num_clips * data_cfg.num_crops
  s, t = data_cfg.image_size, data_cfg.num_frames

  def one(index: int):
    ex = source[int(index)]
    return make_eval_views(ex, data_cfg), int(ex["label"])

  def make_batch(b: int, pool):
    chunk = mine[b * batch_size:(b + 1) * batch_size]

    def collate(items):
      foggy = np.zeros((batch_size, v, t, s, s, 3), np.float32)
      label = np.zeros((batch_size,), np.int32)
      mask = np.zeros((batch_size,), bool)
      for k, (x, l) in enumerate(items):
        foggy[k], label[k], mask[k] = x, l, True
      return {"foggy": foggy, "label": label, "mask": mask}

    return collate, [pool.submit(one, i) for i in chunk]

  pool = concurrent.futures.ThreadPoolExecutor(data_cfg.num_workers)
  try:
    yield from _prefetched(make_batch, range(nb), data_cfg.get("prefetch", 2), pool)
  finally:
    pool.shutdown(wait=False)
