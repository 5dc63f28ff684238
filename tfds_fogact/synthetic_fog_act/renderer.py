"""Procedural renderer of the generated paired benchmark.

A clip shows one articulated human-like figure (capsule limbs, round head)
performing an action in an outdoor scene seen through a pinhole camera:

* World: metres, y up; the camera stands at height ``CAMERA_HEIGHT`` looking along
  +z; the ground is the plane y = 0. A point (x, y, z) projects to column
  ``W/2 + f x / z`` and row ``horizon + f (CAMERA_HEIGHT - y) / z``.
* Depth map: relative distance ``min(z / FAR, 1)`` per pixel (sky = 1), used by the
  ASM fog, so fog hides far figures and far background more than near ones.
* Scenes: sky / ground colours, ground stripes (constant-z bands that show the
  perspective), horizon row and a set of background objects (trees, buildings,
  poles, rocks) at different depths. The layout depends on the scene and the
  camera perspective (the camera sees a different part of the scene from each
  side).
* Perspectives: the figure's rest orientation relative to the camera: ``front``
  (facing the camera), ``back`` (facing away), ``left`` (the camera sees its left
  side) and ``right``. Actions are defined in the figure's own frame (e.g.
  "sidestep to its own left"), so the same action moves differently on screen
  from each perspective, as in a multi-camera recording.
* Cues that make the figure's orientation visible: the face is drawn on the front
  of the head (skin) and hair on the back, the shirt is darker on the back, the
  figure's left limbs are lighter than its right limbs, limbs are drawn far to near
  and shaded by distance, and a shadow under the feet.

Everything is NumPy; a clip is a pure function of its :class:`ClipSpec`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

CAMERA_HEIGHT = 1.5  # metres
FAR = 16.0  # metres at relative distance 1
FOCAL = 1.1  # focal length in units of the image width
FIGURE_DISTANCE = (3.0, 4.5)  # metres: range of the figure's starting distance from the camera
LIMB_RADIUS = 0.085  # metres (arms and legs)
TRUNK_RADIUS = 0.18  # metres

# Order matters: label ids. Every action has its own body pose (which limbs move, how far,
# where they end up), so single frames already tell the classes apart and fog, which hides
# the thin limbs, is what makes them hard; no two classes differ only in time order.
CLASS_NAMES = (
  'sit_down',
  'raise_arms',
  'arms_out',
  'push_forward',
  'wave_left',
  'wave_right',
  'point_left',
  'point_right',
  'jump',
  'bow',
  'walk',
  'sidestep',
  'turn_around',
  'kick',
)
# Mirror images of each other (a horizontal flip of the video turns one into the other; the
# renderer's lighter left limbs are the only cue that does not flip).
MIRROR_CLASS_PAIRS = (('wave_left', 'wave_right'), ('point_left', 'point_right'))
PERSPECTIVE_YAW = {'front': np.pi, 'back': 0.0, 'left': -np.pi / 2, 'right': np.pi / 2}

SCENES = ('meadow', 'campus', 'construction_site', 'playground', 'street', 'park')

_SCENE_STYLE = {
  #                      sky top            sky bottom          ground            horizon
  'meadow': ((0.45, 0.65, 0.90), (0.80, 0.87, 0.95), (0.35, 0.55, 0.25), 0.38),
  'campus': ((0.55, 0.65, 0.80), (0.85, 0.88, 0.92), (0.55, 0.55, 0.55), 0.42),
  'construction_site': ((0.60, 0.62, 0.65), (0.85, 0.84, 0.80), (0.55, 0.45, 0.32), 0.36),
  'playground': ((0.40, 0.60, 0.95), (0.80, 0.88, 0.98), (0.62, 0.30, 0.25), 0.40),
  'street': ((0.50, 0.55, 0.65), (0.80, 0.82, 0.85), (0.30, 0.30, 0.33), 0.45),
  'park': ((0.50, 0.70, 0.85), (0.85, 0.90, 0.90), (0.28, 0.48, 0.22), 0.34),
}
_SCENE_OBJECTS = {
  'meadow': ('tree', 'tree', 'rock'),
  'campus': ('building', 'tree', 'pole'),
  'construction_site': ('building', 'pole', 'rock', 'crane'),
  'playground': ('pole', 'tree', 'rock'),
  'street': ('building', 'pole', 'building'),
  'park': ('tree', 'tree', 'pole', 'rock'),
}

# Skeleton bones (parent joint, child joint) by name; see `_skeleton`.
BONES = (
  ('pelvis', 'neck'),
  ('neck', 'l_shoulder'),
  ('neck', 'r_shoulder'),
  ('l_shoulder', 'l_elbow'),
  ('l_elbow', 'l_hand'),
  ('r_shoulder', 'r_elbow'),
  ('r_elbow', 'r_hand'),
  ('pelvis', 'l_hip'),
  ('pelvis', 'r_hip'),
  ('l_hip', 'l_knee'),
  ('l_knee', 'l_foot'),
  ('r_hip', 'r_knee'),
  ('r_knee', 'r_foot'),
)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Everything that determines one rendered clip."""

  label: int
  perspective: str
  scene: str
  num_frames: int
  height: int
  width: int
  seed: int

  def __post_init__(self):
    if not 0 <= self.label < len(CLASS_NAMES):
      raise ValueError(f'ClipSpec.label must be in [0, {len(CLASS_NAMES)}), got {self.label}')
    if self.perspective not in PERSPECTIVE_YAW:
      raise ValueError(
        f'ClipSpec.perspective must be one of {sorted(PERSPECTIVE_YAW)}, got {self.perspective!r}'
      )
    if self.scene not in _SCENE_STYLE:
      raise ValueError(f'ClipSpec.scene must be one of {SCENES}, got {self.scene!r}')
    if self.num_frames < 2 or self.height < 16 or self.width < 16:
      raise ValueError(f'ClipSpec: need num_frames >= 2 and a frame of at least 16x16, got {self}')


# ----------------------------------------------------------------------------- actions


def _smooth(p):
  p = np.clip(p, 0.0, 1.0)
  return p * p * (3 - 2 * p)


def _pose(action: str, p: np.ndarray, cycles: float) -> dict[str, np.ndarray]:
  """Pose parameters (radians / metres, body frame) for progress p in [0, 1], shape (T,)."""
  z = np.zeros_like(p)
  pose = {
    k: z.copy()
    for k in (
      'dx',
      'dy',
      'dz',
      'yaw',
      'pitch',
      'l_sh_flex',
      'r_sh_flex',
      'l_sh_abd',
      'r_sh_abd',
      'l_elbow',
      'r_elbow',
      'l_hip',
      'r_hip',
      'l_knee',
      'r_knee',
    )
  }
  # relaxed arms by default
  pose['l_sh_abd'] += 0.15
  pose['r_sh_abd'] += 0.15
  pose['l_elbow'] += 0.2
  pose['r_elbow'] += 0.2
  s = _smooth(p)
  gait = np.sin(2 * np.pi * cycles * p)
  if action == 'sit_down':
    pose['l_hip'] = pose['r_hip'] = 1.5 * s
    pose['l_knee'] = pose['r_knee'] = 1.7 * s
    pose['dy'] = -0.42 * s
    pose['pitch'] = 0.35 * s
    pose['l_sh_flex'] = pose['r_sh_flex'] = 0.6 * s
  elif action == 'raise_arms':
    pose['l_sh_abd'] = pose['r_sh_abd'] = 0.15 + 2.85 * s
    pose['l_elbow'] = pose['r_elbow'] = 0.2 * (1 - s)
  elif action == 'arms_out':
    pose['l_sh_abd'] = pose['r_sh_abd'] = 0.15 + 1.45 * s
    pose['l_elbow'] = pose['r_elbow'] = 0.2 * (1 - s)
  elif action == 'push_forward':
    reach = s * (0.75 + 0.25 * np.abs(gait))
    pose['l_sh_flex'] = pose['r_sh_flex'] = 1.5 * s
    pose['l_sh_abd'] = pose['r_sh_abd'] = 0.15 * (1 - s)
    pose['l_elbow'] = pose['r_elbow'] = 1.4 * (1 - reach)
  elif action in ('wave_left', 'wave_right'):
    side = 'l' if action == 'wave_left' else 'r'
    pose[f'{side}_sh_abd'] = 0.15 + 2.35 * s
    pose[f'{side}_elbow'] = 0.3 + 0.7 * s * (0.5 + 0.5 * gait)
  elif action in ('point_left', 'point_right'):
    side = 'l' if action == 'point_left' else 'r'
    pose[f'{side}_sh_abd'] = 0.15 + 1.45 * s  # one arm straight out to its own side
    pose[f'{side}_elbow'] = 0.2 * (1 - s)
  elif action == 'kick':
    k = np.maximum(0, np.sin(2 * np.pi * cycles * p))
    pose['r_hip'] = 1.5 * k
    pose['r_knee'] = 0.9 * (1 - k) * (k > 0.05)
    pose['l_sh_flex'] = 0.5 * k
    pose['pitch'] = -0.15 * k
  elif action == 'jump':
    h = np.maximum(0, np.sin(2 * np.pi * cycles * p))
    crouch = np.maximum(0, -np.sin(2 * np.pi * cycles * p))
    pose['dy'] = 0.45 * h - 0.2 * crouch
    pose['l_hip'] = pose['r_hip'] = 0.6 * crouch
    pose['l_knee'] = pose['r_knee'] = 1.1 * crouch
    pose['l_sh_abd'] = pose['r_sh_abd'] = 0.15 + 1.0 * h
  elif action == 'bow':
    b = np.sin(np.pi * s)
    pose['pitch'] = 1.2 * b
    pose['l_sh_flex'] = pose['r_sh_flex'] = 0.4 * b
  elif action == 'walk':
    pose['dz'] = 1.2 * (p - 0.5)  # centred: the figure stays in frame at 3 m
    pose['l_hip'] = 0.45 * gait
    pose['r_hip'] = -0.45 * gait
    pose['l_knee'] = 0.5 * np.maximum(0, -gait)
    pose['r_knee'] = 0.5 * np.maximum(0, gait)
    pose['l_sh_flex'] = -0.4 * gait
    pose['r_sh_flex'] = 0.4 * gait
  elif action == 'sidestep':
    pose['dx'] = -1.2 * (p - 0.5)  # toward the figure's own left; centred on the start
    step = np.abs(gait)
    pose['l_hip'] = 0.15 * step
    pose['r_hip'] = 0.15 * step
    pose['l_knee'] = 0.4 * step
    pose['r_knee'] = 0.4 * step
    pose['l_sh_abd'] = 0.15 + 0.35 * step
    pose['r_sh_abd'] = 0.15 + 0.35 * step
    pose['dy'] = -0.03 * step
  elif action == 'turn_around':
    pose['yaw'] = np.pi * s  # ends facing the other way
    pose['l_sh_flex'] = 0.3 + z
    pose['r_sh_flex'] = 0.3 + z
    pose['l_elbow'] = pose['r_elbow'] = 1.2 + z
  else:
    raise ValueError(f'unknown action {action!r}')
  return pose


def _rot_x(a):
  c, s = np.cos(a), np.sin(a)
  o, i = np.zeros_like(a), np.ones_like(a)
  return np.stack([np.stack([i, o, o], -1), np.stack([o, c, -s], -1), np.stack([o, s, c], -1)], -2)


def _rot_y(a):
  c, s = np.cos(a), np.sin(a)
  o, i = np.zeros_like(a), np.ones_like(a)
  return np.stack([np.stack([c, o, s], -1), np.stack([o, i, o], -1), np.stack([-s, o, c], -1)], -2)


def _rot_z(a):
  c, s = np.cos(a), np.sin(a)
  o, i = np.zeros_like(a), np.ones_like(a)
  return np.stack([np.stack([c, -s, o], -1), np.stack([s, c, o], -1), np.stack([o, o, i], -1)], -2)


def _apply(r, v):
  return np.einsum('tij,tj->ti', r, v)


def _skeleton(pose: dict[str, np.ndarray], height: float) -> dict[str, np.ndarray]:
  """Joint positions (T, 3) in the body frame (x = own right, y up, z = facing direction).

  Pitch > 0 bends the trunk forward; flexion > 0 swings a limb forward; abduction > 0
  raises an arm sideways; knee/elbow flexion bends the joint.
  """
  t = pose['dx'].shape[0]
  u = height / 1.75
  down = np.tile(np.array([0.0, -1.0, 0.0]), (t, 1))
  up = -down
  pelvis = np.stack([pose['dx'], 0.95 * u + pose['dy'], pose['dz']], -1)
  trunk = _rot_x(pose['pitch'])  # rotates +y toward +z (forward bend)
  neck = pelvis + 0.55 * u * _apply(trunk, up)
  j = {'pelvis': pelvis, 'neck': neck}
  j['head'] = neck + 0.17 * u * _apply(trunk, up)
  for side, sx in (('l', -1.0), ('r', 1.0)):
    sh = neck + _apply(trunk, np.tile([sx * 0.2 * u, -0.04 * u, 0.0], (t, 1)))
    # arm: abduction about z (outward), then flexion about x (forward), in the trunk frame
    r_arm = trunk @ _rot_x(-pose[f'{side}_sh_flex']) @ _rot_z(sx * pose[f'{side}_sh_abd'])
    elbow = sh + 0.3 * u * _apply(r_arm, down)
    r_fore = r_arm @ _rot_x(-pose[f'{side}_elbow'])
    hand = elbow + 0.27 * u * _apply(r_fore, down)
    hip = pelvis + np.tile([sx * 0.11 * u, 0.0, 0.0], (t, 1))
    r_thigh = _rot_x(-pose[f'{side}_hip'])
    knee = hip + 0.45 * u * _apply(r_thigh, down)
    r_shin = r_thigh @ _rot_x(pose[f'{side}_knee'])
    foot = knee + 0.45 * u * _apply(r_shin, down)
    j.update(
      {
        f'{side}_shoulder': sh,
        f'{side}_elbow': elbow,
        f'{side}_hand': hand,
        f'{side}_hip': hip,
        f'{side}_knee': knee,
        f'{side}_foot': foot,
      }
    )
  # keep the lowest foot on the ground when not jumping/sitting (feet never below ground)
  lowest = np.minimum(j['l_foot'][:, 1], j['r_foot'][:, 1])
  lift = np.where(lowest < 0, -lowest, 0.0)[:, None] * np.array([0.0, 1.0, 0.0])
  return {k: v + lift for k, v in j.items()}


# ----------------------------------------------------------------------------- drawing


def _project(p: np.ndarray, width: int, horizon_row: float):
  """World (..., 3) -> (row, col, z)."""
  f = FOCAL * width
  z = np.maximum(p[..., 2], 0.3)
  col = width / 2 + f * p[..., 0] / z
  row = horizon_row + f * (CAMERA_HEIGHT - p[..., 1]) / z
  return row, col, z


def _capsule(img, depth, r0, c0, r1, c1, radius, colour, d):
  """Draws an anti-aliased capsule (segment with round caps) in place."""
  h, w, _ = img.shape
  pad = radius + 1.5
  top = int(max(0, np.floor(min(r0, r1) - pad)))
  bot = int(min(h, np.ceil(max(r0, r1) + pad) + 1))
  lef = int(max(0, np.floor(min(c0, c1) - pad)))
  rig = int(min(w, np.ceil(max(c0, c1) + pad) + 1))
  if top >= bot or lef >= rig:
    return
  rr = np.arange(top, bot, dtype=np.float32)[:, None] + 0.5
  cc = np.arange(lef, rig, dtype=np.float32)[None, :] + 0.5
  dr, dc = r1 - r0, c1 - c0
  ll = dr * dr + dc * dc
  s = np.clip(((rr - r0) * dr + (cc - c0) * dc) / ll, 0, 1) if ll > 1e-9 else np.zeros_like(rr * cc)
  dist = np.hypot(rr - (r0 + s * dr), cc - (c0 + s * dc))
  alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)[..., None]
  region = img[top:bot, lef:rig]
  region *= 1 - alpha
  region += alpha * np.asarray(colour, np.float32)
  dreg = depth[top:bot, lef:rig]
  np.copyto(dreg, np.float32(d), where=alpha[..., 0] > 0.5)


def _ellipse(img, depth, rc, cc_, ry, rx, colour, d, alpha_max=1.0):
  h, w, _ = img.shape
  top, bot = int(max(0, np.floor(rc - ry - 1))), int(min(h, np.ceil(rc + ry + 2)))
  lef, rig = int(max(0, np.floor(cc_ - rx - 1))), int(min(w, np.ceil(cc_ + rx + 2)))
  if top >= bot or lef >= rig:
    return
  rr = np.arange(top, bot, dtype=np.float32)[:, None] + 0.5
  cc = np.arange(lef, rig, dtype=np.float32)[None, :] + 0.5
  e = np.sqrt(((rr - rc) / max(ry, 0.3)) ** 2 + ((cc - cc_) / max(rx, 0.3)) ** 2)
  alpha = (alpha_max * np.clip((1 - e) * max(min(ry, rx), 0.5) + 0.5, 0, 1))[..., None]
  region = img[top:bot, lef:rig]
  region *= 1 - alpha
  region += alpha * np.asarray(colour, np.float32)
  if depth is not None:
    np.copyto(depth[top:bot, lef:rig], np.float32(d), where=alpha[..., 0] > 0.5)


def _rect(img, depth, r0, r1, c0, c1, colour, d):
  h, w, _ = img.shape
  r0, r1 = int(max(0, round(r0))), int(min(h, round(r1)))
  c0, c1 = int(max(0, round(c0))), int(min(w, round(c1)))
  if r0 >= r1 or c0 >= c1:
    return
  img[r0:r1, c0:c1] = colour
  depth[r0:r1, c0:c1] = d


@functools.lru_cache(maxsize=64)
def background(scene: str, perspective: str, height: int, width: int):
  """Static background (H, W, 3) float32 RGB in [0, 1] and relative depth (H, W)."""
  sky_top, sky_bot, ground, horizon = _SCENE_STYLE[scene]
  hr = horizon * height
  f = FOCAL * width
  rows = np.arange(height, dtype=np.float32) + 0.5
  img = np.zeros((height, width, 3), np.float32)
  depth = np.ones((height, width), np.float32)
  # sky: vertical gradient
  a = np.clip(rows / max(hr, 1), 0, 1)[:, None]
  sky = (1 - a) * np.asarray(sky_top) + a * np.asarray(sky_bot)
  # ground: distance per row, stripes every 2 m, darker near the camera
  below = rows - hr
  zg = np.where(below > 0, f * CAMERA_HEIGHT / np.maximum(below, 1e-3), FAR)
  stripe = 0.06 * np.sign(np.sin(np.pi * zg / 2.0))
  shade = 0.85 + 0.15 * np.clip(zg / FAR, 0, 1)
  gcol = np.asarray(ground)[None, :] * (shade + stripe)[:, None]
  is_ground = (below > 0)[:, None]
  img[:] = np.where(is_ground, gcol, sky)[:, None, :]
  depth[:] = np.where(below > 0, np.clip(zg / FAR, 0, 1), 1.0)[:, None]
  # background objects, far to near
  rng = np.random.default_rng([SCENES.index(scene), list(PERSPECTIVE_YAW).index(perspective), 7])
  kinds = _SCENE_OBJECTS[scene]
  n = 5 + rng.integers(0, 4)
  objs = []
  for _ in range(n):
    z = rng.uniform(9.0, 30.0)
    x = rng.uniform(-0.6, 0.6) * z
    objs.append((z, x, kinds[rng.integers(len(kinds))], rng.uniform(0.8, 1.2), rng.uniform(0, 1)))
  for z, x, kind, scale, tone in sorted(objs, reverse=True):
    d = min(z / FAR, 1.0)
    col = width / 2 + f * x / z
    base = hr + f * CAMERA_HEIGHT / z
    px = f / z  # pixels per metre at this distance
    if kind == 'tree':
      _rect(
        img,
        depth,
        base - 2.0 * px * scale,
        base,
        col - 0.15 * px,
        col + 0.15 * px,
        (0.35, 0.25, 0.15),
        d,
      )
      _ellipse(
        img,
        depth,
        base - 3.2 * px * scale,
        col,
        1.6 * px * scale,
        1.2 * px * scale,
        (0.15 + 0.1 * tone, 0.40 + 0.15 * tone, 0.15),
        d,
      )
    elif kind == 'building':
      wid, hei = 4 * px * scale, (4 + 6 * tone) * px
      c = 0.45 + 0.35 * tone
      _rect(img, depth, base - hei, base, col - wid / 2, col + wid / 2, (c, c * 0.95, c * 0.9), d)
      for k in range(1, int(hei / max(px, 1e-3) // 2)):  # window rows
        _rect(
          img,
          depth,
          base - hei + k * 2 * px - 0.5 * px,
          base - hei + k * 2 * px,
          col - wid / 2 + 0.4 * px,
          col + wid / 2 - 0.4 * px,
          (c * 0.55, c * 0.6, c * 0.7),
          d,
        )
    elif kind == 'pole':
      _rect(
        img,
        depth,
        base - 4 * px * scale,
        base,
        col - 0.08 * px,
        col + 0.08 * px,
        (0.3, 0.3, 0.32),
        d,
      )
      _rect(
        img,
        depth,
        base - 4 * px * scale,
        base - 3.7 * px * scale,
        col - 0.08 * px,
        col + 0.8 * px,
        (0.3, 0.3, 0.32),
        d,
      )
    elif kind == 'rock':
      _ellipse(
        img,
        depth,
        base - 0.4 * px * scale,
        col,
        0.5 * px * scale,
        0.9 * px * scale,
        (0.45 + 0.1 * tone,) * 3,
        d,
      )
    elif kind == 'crane':
      _rect(
        img, depth, base - 12 * px, base, col - 0.25 * px, col + 0.25 * px, (0.85, 0.65, 0.1), d
      )
      _rect(
        img,
        depth,
        base - 12 * px,
        base - 11.5 * px,
        col - 5 * px,
        col + 3 * px,
        (0.85, 0.65, 0.1),
        d,
      )
  return img, depth


def _colours(rng: np.random.Generator) -> dict[str, np.ndarray]:
  shirt = rng.uniform(0.15, 0.95, 3)
  # keep shirts away from grey so the figure stands out from fog in clean frames
  shirt[rng.integers(3)] = rng.uniform(0.0, 0.2)
  pants = rng.uniform(0.05, 0.5, 3)
  skin = np.array([0.95, 0.78, 0.62]) * rng.uniform(0.55, 1.0)
  hair = rng.uniform(0.02, 0.3) * np.array([1.0, 0.8, 0.6])
  return {'shirt': shirt, 'pants': pants, 'skin': skin, 'hair': hair}


def render_clip(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
  """Renders a clip.

  Returns:
    frames: (T, H, W, 3) uint8 clean frames.
    depth: (T, H, W) float32 relative distance in [0, 1] (for the fog).
  """
  rng = np.random.default_rng([spec.seed, 11])
  t_count, h, w = spec.num_frames, spec.height, spec.width
  bg, bg_depth = background(spec.scene, spec.perspective, h, w)
  hr = _SCENE_STYLE[spec.scene][3] * h
  # per-clip variation
  body_h = rng.uniform(1.5, 1.95)
  z0 = rng.uniform(*FIGURE_DISTANCE)
  x0 = rng.uniform(-0.15, 0.15) * z0 / FOCAL
  start = rng.uniform(0.0, 0.25)
  duration = rng.uniform(0.65, 1.0) * (1 - start)
  cycles = rng.uniform(1.5, 2.5)
  yaw0 = PERSPECTIVE_YAW[spec.perspective] + rng.uniform(-0.25, 0.25)
  col = _colours(rng)
  action = CLASS_NAMES[spec.label]
  p = np.clip((np.linspace(0, 1, t_count) - start) / duration, 0, 1)
  pose = _pose(action, p, cycles)
  joints = _skeleton(pose, body_h)
  # body frame -> world: rotate by the figure's yaw, translate to (x0, 0, z0)
  r_world = _rot_y(yaw0 + pose['yaw'])
  world = {k: _apply(r_world, v) + np.array([x0, 0.0, z0]) for k, v in joints.items()}
  facing = _apply(r_world, np.tile([0.0, 0.0, 1.0], (t_count, 1)))  # (T, 3)

  frames = np.empty((t_count, h, w, 3), np.uint8)
  depths = np.empty((t_count, h, w), np.float32)
  f = FOCAL * w
  for ti in range(t_count):
    img = bg.copy()
    dep = bg_depth.copy()
    pts = {k: _project(v[ti], w, hr) for k, v in world.items()}
    zc = float(world['pelvis'][ti, 2])
    px = f / zc  # pixels per metre at the figure
    # shadow on the ground under the figure
    feet_x = 0.5 * (world['l_foot'][ti, 0] + world['r_foot'][ti, 0])
    sr, sc, _ = _project(np.array([feet_x, 0.0, zc]), w, hr)
    shadow_col = img[int(np.clip(sr, 0, h - 1)), int(np.clip(sc, 0, w - 1))] * 0.55
    _ellipse(img, None, sr, sc, 0.12 * px, 0.45 * px, shadow_col, 0, alpha_max=0.8)
    # bones far to near, shaded by distance; figure's left side lighter
    order = sorted(BONES, key=lambda b: -(world[b[0]][ti, 2] + world[b[1]][ti, 2]))
    for a, b in order:
      ra, ca, za = pts[a]
      rb, cb, zb = pts[b]
      zm = 0.5 * (za + zb)
      if a == 'pelvis' and b == 'neck':
        # shirt darker on the back: dot(facing, toward camera)
        front = -facing[ti, 2]
        colour = col['shirt'] * (0.75 + 0.25 * front)
        radius = TRUNK_RADIUS * px
      else:
        part = 'pants' if ('hip' in a or 'knee' in a) else 'shirt'
        colour = col[part] * (1.15 if a.startswith('l_') or b.startswith('l_') else 0.8)
        radius = max(LIMB_RADIUS * px, 0.6)
      colour = np.clip(colour * (1.05 - 0.15 * (zm - zc)), 0, 1)
      _capsule(img, dep, ra, ca, rb, cb, radius, colour, min(zm / FAR, 1.0))
    # head: hair disc, face disc shifted toward the facing direction when it faces the camera
    hrow, hcol, hz = pts['head']
    rad = 0.12 * px * body_h / 1.75
    _ellipse(img, dep, hrow, hcol, rad, rad, col['hair'], min(hz / FAR, 1.0))
    toward = -facing[ti, 2]
    if toward > -0.3:
      side = facing[ti, 0]
      _ellipse(
        img,
        dep,
        hrow + 0.1 * rad,
        hcol + 0.45 * rad * side,
        0.8 * rad,
        rad * (0.45 + 0.35 * max(toward, 0)),
        col['skin'],
        min(hz / FAR, 1.0),
      )
    frames[ti] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    depths[ti] = dep
  return frames, depths
