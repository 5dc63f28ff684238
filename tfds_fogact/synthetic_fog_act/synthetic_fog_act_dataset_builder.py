"""`synthetic_fog_act`: a generated paired clean/foggy action benchmark (no download).

Each example is one procedurally rendered clip (see `renderer.py`) of an
articulated figure performing one of 14 actions, stored twice: the clean frames
and the same frames fogged with the atmospheric scattering model
(`tfds_fogact.fog.apply_fog`, with the renderer's per-pixel depth map and
heterogeneous drifting fog). Half of the clips get light fog, half dense fog (the
`fog` feature). Every action has its own body pose (sit down, raise arms, arms
out, push forward, wave with the left / right arm, point left / right, jump, bow,
walk, sidestep, turn around, kick), so the actions are separable from single
frames and fog, which hides the thin limbs, is what makes them hard. Two pairs are
mirror images (wave / point left and right: MIRROR_CLASS_PAIRS).

Splits: for every (class, perspective) group, `train_per_group` train clips and
`test_per_group` test clips, each with its own random scene, figure size,
position, speed, phase, colours and fog. Everything is a pure function of the
config's `seed`, so two builds give identical records.

Configs: `default` (64x64, 16 frames, 1008 train / 168 test; builds in under a
minute on 2 cores), `bench224` (224x224, 56 / 56, for the input-pipeline
benchmark), `large` (224x298, 2240 / 560) and `pretrain` (64x64, 16800 / 112, generation
seed 1: the clean pretraining set of configs/synthetic_pretrain.py, disjoint from
`default`'s clips).

A manual dir is never needed. When one is given and holds `generation.json`,
its keys `train_per_group`, `test_per_group` and `num_frames` override the
config's values (used by the tests' `dummy_data/`).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfds_fogact import common
from tfds_fogact import fog
from tfds_fogact.synthetic_fog_act import renderer

GENERATION_FILE = 'generation.json'
_OVERRIDABLE = ('train_per_group', 'test_per_group', 'num_frames')
# The `pretrain` config: 300 clips per (class, perspective) group, generation seed 1 (the
# other configs use 0; every clip's scene, figure, motion and fog derive from the seed).
PRETRAIN_PER_GROUP = 300
PRETRAIN_SEED = 1


@dataclasses.dataclass(eq=False)
class SyntheticFogActConfig(common.VideoBuilderConfig):
  """Size of the generated benchmark.

  Attributes:
    num_frames: frames per clip.
    train_per_group / test_per_group: clips per (class, perspective) pair and split.
    seed: generation seed.
  """

  num_frames: int = 16
  train_per_group: int = 18
  test_per_group: int = 3
  seed: int = 0

  def __post_init__(self):
    super().__post_init__()
    if self.frame_size is None:
      raise ValueError(f'builder config {self.name!r}: frame_size (height, width) is required')
    _check_counts(self.name, self.num_frames, self.train_per_group, self.test_per_group)


def _check_counts(where, num_frames, train_per_group, test_per_group):
  if not isinstance(num_frames, int) or num_frames < 2:
    raise ValueError(f'{where}: num_frames must be an int >= 2, got {num_frames!r}')
  for key, v in (('train_per_group', train_per_group), ('test_per_group', test_per_group)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f'{where}: {key} must be an int >= 1, got {v!r}')


def clip_plan(split: str, per_group: int, seed: int) -> list[dict]:
  """The clips of a split: label, perspective, scene, fog level and clip seed of each.

  Fog levels alternate inside every (class, perspective) group, so both levels are
  balanced over classes and perspectives.
  """
  split_id = common.SPLITS.index(split)
  rng = np.random.default_rng([seed, split_id, 101])
  plan = []
  num_classes = len(renderer.CLASS_NAMES)
  for k in range(per_group):
    for label in range(num_classes):
      for pi, persp in enumerate(common.PERSPECTIVES):
        idx = len(plan)
        plan.append(
          dict(
            index=idx,
            label=label,
            perspective=persp,
            scene=renderer.SCENES[int(rng.integers(len(renderer.SCENES)))],
            fog=common.FOG_LEVELS[(k + label + pi + split_id) % 2],
            seed=int(np.random.SeedSequence([seed, split_id, idx]).generate_state(1)[0]),
          )
        )
  return plan


def make_example(item: dict, cfg: SyntheticFogActConfig, num_frames: int, split: str):
  """Renders, fogs and JPEG-encodes one planned clip; returns (key, example)."""
  h, w = cfg.frame_size
  spec = renderer.ClipSpec(
    label=item['label'],
    perspective=item['perspective'],
    scene=item['scene'],
    num_frames=num_frames,
    height=h,
    width=w,
    seed=item['seed'],
  )
  clean, depth = renderer.render_clip(spec)
  foggy = fog.apply_fog(clean, intensity=item['fog'], seed=item['seed'], depth=depth)
  clip_id = f'{split}_{item["index"]:05d}_{renderer.CLASS_NAMES[item["label"]]}'
  return clip_id, {
    'clean': common.encode_jpeg_frames(clean, cfg.jpeg_quality),
    'foggy': common.encode_jpeg_frames(foggy, cfg.jpeg_quality),
    'label': item['label'],
    'clip_id': clip_id,
    'scene': item['scene'],
    'perspective': item['perspective'],
    'fog': item['fog'],
    'num_people': 1,
    'num_frames': num_frames,
  }


class SyntheticFogAct(common.DualFormatMixin, tfds.core.GeneratorBasedBuilder):
  """Generated paired clean/foggy videos of articulated figures (14 actions, 4 views)."""

  VERSION = tfds.core.Version('1.4.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': 'Figure 3-8 m from the camera (was 3.5-11 m); default config 1008 train clips.',
    '1.2.0': 'Figure 3-4.5 m from the camera, thicker limbs (0.085 m) and trunk (0.18 m): '
    'at 64x64 a limb is 3-4 pixels wide and the figure 26-40 pixels tall. '
    'Sidesteps and walks cover 1.2 m centred on the start position (was 1.8 m '
    'from it), so the nearer figure stays in frame.',
    '1.3.0': 'New class set: 14 actions that each have their own body pose (sit_down, '
    'raise_arms, arms_out, push_forward, wave_left, wave_right, point_left, '
    'point_right, jump, bow, walk, sidestep, turn_around, kick) replace the five '
    'pairs that differed only in time order or direction, so fog rather than time '
    'order is the difficulty. Mirror pairs: wave and point, left / right.',
    '1.4.0': '`pretrain`: 300 clips per (class, perspective) group (16800 training clips, '
    "was 5600; the first 5600 are 1.3.0's). The other configs' clips are unchanged.",
  }
  BUILDER_CONFIGS = [
    SyntheticFogActConfig(
      name='default',
      frame_size=(64, 64),
      num_frames=16,
      train_per_group=18,
      test_per_group=3,
      description='64x64, 16 frames, 1008 train / 168 test clips.',
    ),
    SyntheticFogActConfig(
      name='bench224',
      frame_size=(224, 224),
      num_frames=16,
      train_per_group=1,
      test_per_group=1,
      description='224x224, 16 frames, 56 / 56 clips (pipeline benchmark).',
    ),
    SyntheticFogActConfig(
      name='large',
      frame_size=(224, 298),
      num_frames=16,
      train_per_group=40,
      test_per_group=10,
      description='224x298 (short side 224), 16 frames, 2240 / 560 clips.',
    ),
    # The clean pretraining set (configs/synthetic_pretrain.py reads its clean stream only):
    # its own seed, so none of its clips is one of `default`'s train or test clips.
    SyntheticFogActConfig(
      name='pretrain',
      frame_size=(64, 64),
      num_frames=16,
      train_per_group=PRETRAIN_PER_GROUP,
      test_per_group=2,
      seed=PRETRAIN_SEED,
      description='64x64, 16 frames, 16800 / 112 clips of their own seed: '
      'the clean pretraining set.',
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  # Class pairs that are each other's mirror image: a horizontally flipped clip of one
  # shows the other (the input pipeline swaps their labels when it flips a clip).
  MIRROR_CLASS_PAIRS = renderer.MIRROR_CLASS_PAIRS
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Nothing to download: the dataset is rendered. Optionally, a manual dir holding '
    f"`{GENERATION_FILE}` with keys {list(_OVERRIDABLE)} overrides the config's clip counts."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=common.paired_features(renderer.CLASS_NAMES, self.builder_config.frame_shape),
      supervised_keys=None,
      homepage=common.HOMEPAGE,
      citation=common.CITATION,
      description=__doc__,
      alternative_file_formats=list(common.ALTERNATIVE_FILE_FORMATS),
    )

  def _generation_overrides(self, dl_manager) -> dict:
    try:
      manual = dl_manager.manual_dir
    except AssertionError:  # no manual dir given (the normal case): nothing to override
      return {}
    path = epath.Path(manual) / GENERATION_FILE
    if not path.exists():
      return {}
    try:
      spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
    unknown = sorted(set(spec) - set(_OVERRIDABLE))
    if unknown:
      raise ValueError(f'{path}: unknown keys {unknown}; allowed: {list(_OVERRIDABLE)}')
    return spec

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    over = self._generation_overrides(dl_manager)
    num_frames = over.get('num_frames', cfg.num_frames)
    counts = {
      'train': over.get('train_per_group', cfg.train_per_group),
      'test': over.get('test_per_group', cfg.test_per_group),
    }
    _check_counts(
      f'{GENERATION_FILE} / config {cfg.name!r}', num_frames, counts['train'], counts['test']
    )
    return {
      split: self._generate_examples(split, counts[split], num_frames) for split in common.SPLITS
    }

  def _generate_examples(self, split: str, per_group: int, num_frames: int):
    cfg = self.builder_config
    for item in clip_plan(split, per_group, cfg.seed):
      yield make_example(item, cfg, num_frames, split)
