"""Fog synthesis with the atmospheric scattering model (ASM).

For every pixel of a clean frame ``J`` (RGB in [0, 1]) the foggy frame is

    I = J * t + A * (1 - t),        t = exp(-beta * d)

where ``d`` is the relative scene distance in [0, 1] (0 = at the camera, 1 = the
farthest visible point, e.g. the horizon), ``beta`` the extinction coefficient per
unit of relative distance and ``A`` the atmospheric light (airlight, per channel).

* Depth comes from a depth map when one is given, otherwise from the monocular
  prior :func:`default_depth` (a ground plane seen from a camera whose horizon is
  at a given image row: distance grows like ``1 / (row - horizon)`` toward the
  horizon; everything above the horizon is at distance 1).
* Heterogeneous fog: ``beta`` is multiplied by ``exp(s * n(x, y, t))`` where ``n`` is
  a smooth noise field (smoothstep-interpolated coarse Gaussian grids,
  two octaves) that drifts slowly across the image over the frames of a clip, so
  fog patches move coherently and never flicker from frame to frame.
* Presets (sampled per clip from the seed):

  ========  ==================  ==================  =========================
  preset    beta range          A range (grey)      transmission at d = 1
  ========  ==================  ==================  =========================
  light     0.8 – 1.4           0.70 – 0.85         0.45 – 0.25
  dense     2.6 – 4.0           0.80 – 0.95         0.074 – 0.018
  ========  ==================  ==================  =========================

  Each channel of ``A`` gets a small independent offset (±0.03) so fog can be
  slightly bluish or warm; heterogeneity strength ``s`` is 0.35 (light) / 0.25
  (dense).

Everything is vectorised NumPy (float32) and deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np

__all__ = [
  'FogPreset',
  'FogParams',
  'PRESETS',
  'sample_params',
  'default_depth',
  'noise_field',
  'transmission',
  'apply_fog',
]


@dataclasses.dataclass(frozen=True)
class FogPreset:
  """Ranges from which the per-clip fog parameters are drawn uniformly."""

  beta_range: tuple[float, float]
  airlight_range: tuple[float, float]
  airlight_tint: float = 0.03
  hetero_strength: float = 0.3
  noise_cells: float = 3.0
  drift_per_frame: float = 0.01

  def __post_init__(self):
    lo, hi = self.beta_range
    if not 0.0 <= lo <= hi:
      raise ValueError(f'FogPreset.beta_range must satisfy 0 <= lo <= hi, got {self.beta_range}')
    lo, hi = self.airlight_range
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(f'FogPreset.airlight_range must lie in [0, 1], got {self.airlight_range}')


@dataclasses.dataclass(frozen=True)
class FogParams:
  """Concrete fog of one clip.

  Attributes:
    beta: extinction coefficient per unit relative distance (>= 0).
    airlight: atmospheric light, a float (grey) or 3 floats (RGB) in [0, 1].
    hetero_strength: std of the log-multiplier of beta (0 = homogeneous fog).
    noise_cells: number of coarse noise cells along the longer image side
      (larger = smaller fog patches).
    drift_per_frame: how far the noise field moves per frame, as a fraction of the
      longer image side.
  """

  beta: float
  airlight: Union[float, tuple[float, float, float]] = 0.8
  hetero_strength: float = 0.3
  noise_cells: float = 3.0
  drift_per_frame: float = 0.01

  def __post_init__(self):
    if not np.isfinite(self.beta) or self.beta < 0:
      raise ValueError(f'FogParams.beta must be a finite number >= 0, got {self.beta}')
    a = np.asarray(self.airlight, dtype=np.float64)
    if a.shape not in ((), (3,)) or np.any(a < 0) or np.any(a > 1):
      raise ValueError(
        f'FogParams.airlight must be a float or 3 floats in [0, 1], got {self.airlight}'
      )
    if self.hetero_strength < 0:
      raise ValueError(f'FogParams.hetero_strength must be >= 0, got {self.hetero_strength}')
    if self.noise_cells <= 0:
      raise ValueError(f'FogParams.noise_cells must be > 0, got {self.noise_cells}')

  def airlight_rgb(self) -> np.ndarray:
    """Airlight as a float32 array of shape (3,)."""
    return np.broadcast_to(np.asarray(self.airlight, np.float32), (3,)).copy()


PRESETS: dict[str, FogPreset] = {
  'light': FogPreset(beta_range=(0.8, 1.4), airlight_range=(0.70, 0.85), hetero_strength=0.35),
  'dense': FogPreset(beta_range=(2.6, 4.0), airlight_range=(0.80, 0.95), hetero_strength=0.25),
}


def _rng(seed: int, salt: int) -> np.random.Generator:
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
    raise TypeError(f'fog: seed must be an int, got {seed!r}')
  return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, salt])


def sample_params(intensity: Union[str, FogPreset, FogParams], seed: int) -> FogParams:
  """Draws the clip's :class:`FogParams` from a preset name / preset (or passes params)."""
  if isinstance(intensity, FogParams):
    return intensity
  if isinstance(intensity, str):
    if intensity not in PRESETS:
      raise ValueError(
        f'fog intensity must be one of {sorted(PRESETS)} or FogParams, got {intensity!r}'
      )
    preset = PRESETS[intensity]
  elif isinstance(intensity, FogPreset):
    preset = intensity
  else:
    raise TypeError(
      f'fog intensity must be a preset name, FogPreset or FogParams, got {type(intensity)}'
    )
  rng = _rng(seed, 1)
  beta = float(rng.uniform(*preset.beta_range))
  a = float(rng.uniform(*preset.airlight_range))
  tint = rng.uniform(-preset.airlight_tint, preset.airlight_tint, size=3)
  airlight = tuple(float(x) for x in np.clip(a + tint, 0.0, 1.0))
  return FogParams(
    beta=beta,
    airlight=airlight,
    hetero_strength=preset.hetero_strength,
    noise_cells=preset.noise_cells,
    drift_per_frame=preset.drift_per_frame,
  )


def default_depth(height: int, width: int, horizon: float = 0.35, near: float = 0.08) -> np.ndarray:
  """Monocular depth prior: a flat ground plane below a horizon row.

  For a pinhole camera above a flat ground, the distance to the ground seen at
  image row ``y`` is proportional to ``1 / (y - y_horizon)``. Rows are normalised
  to [0, 1] (top to bottom); the prior is scaled so the bottom row is at relative
  distance ``near`` and clipped to 1, and every row at or above the horizon
  (sky, far background) is at distance 1. The map varies along rows only, so it is
  never constant (as long as ``horizon < 1``).

  Args:
    height, width: output size.
    horizon: horizon row as a fraction of the height, in [0, 1).
    near: relative distance of the bottom row, in (0, 1).

  Returns:
    float32 (height, width) relative distance in [near, 1].
  """
  if height < 1 or width < 1:
    raise ValueError(f'default_depth: height and width must be >= 1, got {height}x{width}')
  if not 0.0 <= horizon < 1.0:
    raise ValueError(f'default_depth: horizon must be in [0, 1), got {horizon}')
  if not 0.0 < near < 1.0:
    raise ValueError(f'default_depth: near must be in (0, 1), got {near}')
  y = (np.arange(height, dtype=np.float32) + 0.5) / height
  below = y - horizon
  k = near * (1.0 - horizon)  # so that d(y = 1) = near
  with np.errstate(divide='ignore'):
    d = np.where(below > 0, k / np.maximum(below, 1e-6), 1.0)
  d = np.clip(d, near, 1.0).astype(np.float32)
  return np.broadcast_to(d[:, None], (height, width)).copy()


def _interp_weights(coords: np.ndarray, size: int):
  """Cell indices (i0, i1) and weights (w0, w1) for float grid coordinates, wrapping.

  Smoothstep-weighted linear interpolation (C1-continuous field, no visible grid
  lines); w0 + w1 = 1.
  """
  i0 = np.floor(coords)
  f = (coords - i0).astype(np.float32)
  f = f * f * (3 - 2 * f)
  i0 = i0.astype(np.int64) % size
  return i0, (i0 + 1) % size, 1 - f, f


def noise_field(
  num_frames: int,
  height: int,
  width: int,
  *,
  seed: int,
  cells: float = 3.0,
  drift_per_frame: float = 0.01,
  start_frame: int = 0,
) -> np.ndarray:
  """Smooth, temporally coherent noise of shape (T, H, W), roughly unit std.

  Two octaves of smoothstep-interpolated Gaussian grids (the coarse octave has
  `cells` cells along the longer side). The sampling window moves by
  `drift_per_frame` (fraction of the longer side) per frame in a random direction,
  so frame t+1 is frame t shifted by a few pixels: the field changes slowly and
  coherently over time. Because the window is a translation, the interpolation is
  separable: interpolate the grid rows first (T, H, cells), then gather columns.
  Frame t of the field depends on t only: frames [s, s + T) of a longer clip are
  `noise_field(T, ..., start_frame=s)`, so a video can be fogged in chunks.
  """
  rng = _rng(seed, 2)
  side = max(height, width)
  angle = rng.uniform(0, 2 * np.pi)
  vy, vx = np.sin(angle), np.cos(angle)
  t = np.arange(start_frame, start_frame + num_frames, dtype=np.float32)[:, None]  # (T, 1)
  ys = (np.arange(height, dtype=np.float32) / side)[None, :]  # (1, H)
  xs = (np.arange(width, dtype=np.float32) / side)[None, :]  # (1, W)
  out = np.zeros((num_frames, height, width), np.float32)
  total_var = 0.0
  for octave, amp in ((1.0, 1.0), (2.0, 0.5)):
    c = cells * octave
    g = int(np.ceil(c)) + 6
    grid = rng.standard_normal((g, g)).astype(np.float32)
    oy, ox = rng.uniform(0, g, size=2)
    y0, y1, wy0, wy1 = _interp_weights((ys + vy * drift_per_frame * t) * c + oy, g)  # (T, H)
    x0, x1, wx0, wx1 = _interp_weights((xs + vx * drift_per_frame * t) * c + ox, g)  # (T, W)
    rows = grid[y0] * wy0[..., None] + grid[y1] * wy1[..., None]  # (T, H, g)
    cols0 = np.broadcast_to(x0[:, None, :], (num_frames, height, width))
    cols1 = np.broadcast_to(x1[:, None, :], (num_frames, height, width))
    out += amp * (
      np.take_along_axis(rows, cols0, axis=2) * wx0[:, None, :]
      + np.take_along_axis(rows, cols1, axis=2) * wx1[:, None, :]
    )  # (T, H, W)
    total_var += amp * amp
  # smoothstep interpolation of unit Gaussians has std ~0.7; renormalise roughly
  return out / np.float32(0.7 * np.sqrt(total_var))


def _check_depth(depth, num_frames: int, height: int, width: int) -> np.ndarray:
  d = np.asarray(depth, dtype=np.float32)
  if d.shape == (height, width):
    d = d[None]
  elif d.shape != (num_frames, height, width):
    raise ValueError(
      f'fog depth must have shape (H, W)=({height}, {width}) or (T, H, W)=({num_frames}, {height}, {width}),'
      f' got {d.shape}'
    )
  if not np.all(np.isfinite(d)) or d.min() < 0 or d.max() > 1:
    raise ValueError(
      f'fog depth must be a relative distance in [0, 1], got range [{d.min()}, {d.max()}]'
    )
  return d


def transmission(
  shape: tuple[int, int, int],
  params: FogParams,
  *,
  seed: int,
  depth=None,
  heterogeneous: bool = True,
  start_frame: int = 0,
) -> np.ndarray:
  """Transmission map t = exp(-beta_field * d) of shape (T, H, W) (or (1, H, W) if static)
  for frames [start_frame, start_frame + T) of a clip."""
  num_frames, height, width = shape
  d = (
    default_depth(height, width)[None]
    if depth is None
    else _check_depth(depth, num_frames, height, width)
  )
  if heterogeneous and params.hetero_strength > 0:
    n = noise_field(
      num_frames,
      height,
      width,
      seed=seed,
      cells=params.noise_cells,
      drift_per_frame=params.drift_per_frame,
      start_frame=start_frame,
    )
    beta = np.float32(params.beta) * np.exp(np.float32(params.hetero_strength) * n)
  else:
    beta = np.float32(params.beta)
  return np.exp(-beta * d).astype(np.float32)


def apply_fog(
  frames: np.ndarray,
  *,
  intensity: Union[str, FogPreset, FogParams] = 'light',
  seed: int,
  depth=None,
  heterogeneous: bool = True,
  start_frame: int = 0,
) -> np.ndarray:
  """Adds ASM fog to a clip.

  Args:
    frames: (T, H, W, 3) (or a single (H, W, 3) frame), uint8 in [0, 255] or float in [0, 1].
    intensity: 'light', 'dense', a :class:`FogPreset` (parameters drawn from `seed`)
      or explicit :class:`FogParams`.
    seed: integer seed; the same frames, intensity and seed give the same output.
    depth: relative distance in [0, 1], (H, W) or (T, H, W); None = :func:`default_depth`.
    heterogeneous: modulate beta with the drifting smooth noise field.
    start_frame: index of ``frames[0]`` in the whole clip: fogging a clip chunk by chunk
      with the chunks' start indices gives the same frames as fogging it whole.

  Returns:
    Foggy frames with the dtype and shape of `frames`.
  """
  x = np.asarray(frames)
  single = x.ndim == 3
  if single:
    x = x[None]
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(
      f'apply_fog: frames must be (T, H, W, 3) or (H, W, 3), got shape {np.shape(frames)}'
    )
  params = sample_params(intensity, seed)
  num_frames, height, width, _ = x.shape
  t = transmission(
    (num_frames, height, width),
    params,
    seed=seed,
    depth=depth,
    heterogeneous=heterogeneous,
    start_frame=start_frame,
  )[..., None]  # (T|1, H, W, 1)
  a = params.airlight_rgb()
  if x.dtype == np.uint8:
    # I = J t + A (1 - t) = (J - A) t + A, computed in [0, 255]
    a255 = a * np.float32(255)
    out = (x.astype(np.float32) - a255) * t
    out += a255 + np.float32(0.5)
    out = np.clip(out, 0, 255, out=out).astype(np.uint8)
  elif np.issubdtype(x.dtype, np.floating):
    out = ((x.astype(np.float32) - a) * t + a).astype(x.dtype)
  else:
    raise TypeError(f'apply_fog: frames must be uint8 or float, got {x.dtype}')
  return out[0] if single else out
