"""FogAct: real paired clean/foggy action videos (manual download).

Registered as ``fogact`` (configs ``fogact/default``, ``fogact/small``, ``fogact/full_fps``).
See `MANUAL_DOWNLOAD_INSTRUCTIONS` for the manual directory layouts and docs/data_real.md
for the options.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from tfds_fogact import common
from tfds_fogact.fogact import annotations
from tfds_fogact.fogact import video_pairs


@dataclasses.dataclass(eq=False)
class FogActConfig(common.VideoBuilderConfig):
  """Resolution / frame-rate config plus the seeded split of rows without a split.

  Attributes:
    split_seed: seed of the stratified train/test split of clips whose split is empty.
    test_fraction: fraction of each class's unsplit clips that go to 'test'.
  """

  split_seed: int = 0
  test_fraction: float = 0.2

  def __post_init__(self):
    super().__post_init__()
    if not 0.0 <= self.test_fraction < 1.0:
      raise ValueError(
        f'builder config {self.name!r}: test_fraction must be in [0, 1), got {self.test_fraction}'
      )


def features_without_label_names(frame_shape) -> tfds.features.FeaturesDict:
  """`common.paired_features` whose ``label`` gets its names from the manual dir at build.

  The class names of a manual dataset are only known once the manual directory is read
  (``classes.txt`` or the class folders); ``_split_generators`` sets them, and a prepared
  dataset restores them from its ``label.labels.txt``.
  """
  base = common.paired_features(['_'], frame_shape)
  spec = {key: feature for key, feature in base.items()}
  spec['label'] = tfds.features.ClassLabel()
  return tfds.features.FeaturesDict(spec)


def split_generators(builder, clips, classes, generate):
  """Sets the label names and returns {split: generator} for the non-empty splits."""
  builder.info.features['label'].names = list(classes)
  by_split = {split: [c for c in clips if c.split == split] for split in common.SPLITS}
  empty = [s for s, c in by_split.items() if not c]
  if len(empty) == len(by_split):
    raise ValueError(f'{builder.name}: no clips to build')
  return {split: generate(c) for split, c in by_split.items() if c}


class Builder(
  common.DualFormatMixin, video_pairs.ReportingBuilderMixin, tfds.core.GeneratorBasedBuilder
):
  """FogAct paired clean/foggy videos from a manual directory."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
    FogActConfig(name='default', description='Short side 256 px, 8 fps.', short_side=256, fps=8),
    FogActConfig(name='small', description='Short side 128 px, 8 fps.', short_side=128, fps=8),
    FogActConfig(
      name='full_fps', description='Short side 256 px, source frame rate.', short_side=256, fps=None
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  FogAct cannot be downloaded automatically. Put the videos in the manual directory
  (`download_config=tfds.download.DownloadConfig(manual_dir=...)`, `tfds build
  --manual_dir=...`, or data.manual_dir in the training config; TFDS default:
  <data_dir>/downloads/manual) in one of two layouts:

  1. Annotated (all metadata):
       classes.txt       one class name a line; line order = label id
       annotations.csv   header: clip_id,label,clean,foggy,scene,perspective,fog,split
                         (optional extra column num_people); clean/foggy are paths
                         relative to the manual directory; perspective is one of
                         front/back/left/right, fog light/dense, split train/test (each may
                         be empty = unknown; an empty split gets a seeded 80/20 split
                         stratified by class)
       <the video files the csv points at>
  2. Plain (labels only):
       clean/<class>/<name>.<ext>  and  foggy/<class>/<name>.<ext>
     paired by <class>/<name>; classes = sorted folder names (or classes.txt if present).

  Videos: .mp4, .avi, .mov or .mkv. Every annotation problem (unpaired video, missing file,
  unknown label / perspective / fog / split) is reported at once before decoding starts.
  Unreadable videos stop the build unless skip_bad_videos=True (or FOGACT_SKIP_BAD=1).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description='FogAct: paired clean/foggy videos of 55 human actions, 10 scenes, '
      '4 perspectives, light and dense real fog.',
      features=features_without_label_names(self.builder_config.frame_shape),
      supervised_keys=None,
      homepage=common.HOMEPAGE,
      citation=common.CITATION,
      metadata=tfds.core.MetadataDict(),
      alternative_file_formats=list(common.ALTERNATIVE_FILE_FORMATS),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    classes, clips = annotations.load_manual_dir(dl_manager.manual_dir)
    clips = annotations.assign_splits(
      clips, seed=config.split_seed, test_fraction=config.test_fraction
    )
    return split_generators(self, clips, classes, self._generate_examples)

  def _generate_examples(self, clips):
    return video_pairs.generate_examples(
      clips,
      self.builder_config,
      skip_bad=self.skip_bad_videos,
      report=self.build_report,
      hint=video_pairs.SKIP_HINT,
    )
