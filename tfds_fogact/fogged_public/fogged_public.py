"""UCF-101, HMDB-51 and Kinetics-100 fogged at build time: ``ucf101_fog``, ``hmdb51_fog``,
``kinetics100_fog``.

The clean stream is the original video (decoded, subsampled and resized by the builder
config); the foggy stream is the same frames through `tfds_fogact.fog.apply_fog` (ASM with
the monocular depth prior and drifting heterogeneous fog). Each clip's fog level
(light/dense) and fog seed are drawn from (config.fog_seed, clip_id), so a build is
deterministic and independent of clip order; the level is stored in the ``fog`` feature.
Perspective is unknown (-1), ``num_people`` is -1, ``scene`` is the UCF-101 group (gXX)
or empty. Manual-dir layouts: `tfds_fogact.fogged_public.splits`.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import tensorflow_datasets as tfds

from tfds_fogact import common
from tfds_fogact import fog as fog_lib
from tfds_fogact.fogact import annotations
from tfds_fogact.fogact import fogact_dataset_builder as fogact_builder
from tfds_fogact.fogact import video_pairs
from tfds_fogact.fogged_public import splits


@dataclasses.dataclass(eq=False)
class FoggedConfig(common.VideoBuilderConfig):
  """Resolution / frame rate plus the fog and split choices of a fogged public dataset.

  Attributes:
    fog_seed: seed of the per-clip fog level and fog field.
    fog_levels: levels drawn from (uniformly, per clip), a subset of common.FOG_LEVELS.
    split_number: official split (1-3) of UCF-101 / HMDB-51; unused by Kinetics-100.
    split_seed / test_fraction: seeded stratified split of Kinetics-100 rows without one.
  """

  fog_seed: int = 0
  fog_levels: tuple = common.FOG_LEVELS
  split_number: int = 1
  split_seed: int = 0
  test_fraction: float = 0.2

  def __post_init__(self):
    super().__post_init__()
    where = f'builder config {self.name!r}'
    bad = [f for f in self.fog_levels if f not in common.FOG_LEVELS]
    if not self.fog_levels or bad:
      raise ValueError(
        f'{where}: fog_levels must be a non-empty subset of '
        f'{common.FOG_LEVELS}, got {self.fog_levels}'
      )
    if self.split_number not in (1, 2, 3):
      raise ValueError(f'{where}: split_number must be 1, 2 or 3, got {self.split_number}')
    if not 0.0 <= self.test_fraction < 1.0:
      raise ValueError(f'{where}: test_fraction must be in [0, 1), got {self.test_fraction}')


def clip_fog(clip_id: str, config: FoggedConfig) -> tuple[str, int]:
  """(fog level, fog seed) of a clip: a function of (config.fog_seed, clip_id) only."""
  state = np.random.SeedSequence(
    [int(config.fog_seed) & 0xFFFFFFFF, zlib.crc32(clip_id.encode('utf-8'))]
  ).generate_state(2)
  return config.fog_levels[int(state[1]) % len(config.fog_levels)], int(state[0])


def make_foggy(config: FoggedConfig):
  """The `video_pairs.FogMaker` of `config`."""

  def fn(clip: annotations.Clip, clean: np.ndarray) -> tuple[np.ndarray, str]:
    level, seed = clip_fog(clip.clip_id, config)
    return fog_lib.apply_fog(clean, intensity=level, seed=seed), level

  return fn


def _configs(source: str) -> list[FoggedConfig]:
  return [
    FoggedConfig(
      name='default',
      description=f'{source}, short side 256 px, 8 fps, light or dense fog per clip.',
      short_side=256,
      fps=8,
    ),
    FoggedConfig(
      name='small', description=f'{source}, short side 128 px, 8 fps.', short_side=128, fps=8
    ),
    FoggedConfig(
      name='full_fps',
      description=f'{source}, short side 256 px, source frame rate.',
      short_side=256,
      fps=None,
    ),
  ]


class _FoggedPublicBuilder(
  common.DualFormatMixin,
  video_pairs.ReportingBuilderMixin,
  tfds.core.GeneratorBasedBuilder,
  skip_registration=True,
):
  """Shared logic; subclasses set DESCRIPTION, SOURCE_CITATION and `_read_manual_dir`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  DESCRIPTION = ''
  # BibTeX of the source dataset, cited after the paper (which fogs it the same way, Table 4).
  SOURCE_CITATION = ''

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=self.DESCRIPTION,
      features=fogact_builder.features_without_label_names(self.builder_config.frame_shape),
      homepage=common.HOMEPAGE,
      citation='\n\n'.join(c for c in (common.CITATION, self.SOURCE_CITATION) if c),
      metadata=tfds.core.MetadataDict(),
      alternative_file_formats=list(common.ALTERNATIVE_FILE_FORMATS),
    )

  def _read_manual_dir(self, manual_dir):
    """(classes, clips) of the dataset's manual dir; each dataset's builder defines it."""
    raise NotImplementedError(f'{type(self).__name__} does not define _read_manual_dir')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    classes, clips = self._read_manual_dir(dl_manager.manual_dir)
    return fogact_builder.split_generators(self, clips, classes, self._generate_examples)

  def _generate_examples(self, clips):
    return video_pairs.generate_examples(
      clips,
      self.builder_config,
      skip_bad=self.skip_bad_videos,
      report=self.build_report,
      make_foggy=make_foggy(self.builder_config),
      hint=video_pairs.SKIP_HINT,
    )


_INSTRUCTIONS = """
  {name} cannot be downloaded automatically. Put the original videos and the official split
  files in the manual directory (DownloadConfig(manual_dir=...) or data.manual_dir; TFDS
  default: <data_dir>/downloads/manual):
{layout}
  The foggy stream is synthesised at build time with the atmospheric scattering model.
  Unreadable videos stop the build unless skip_bad_videos=True (or FOGACT_SKIP_BAD=1).
  """


class Ucf101Fog(_FoggedPublicBuilder):
  """UCF-101 with ASM fog (official split 1-3)."""

  BUILDER_CONFIGS = _configs('UCF-101 split 1')
  DESCRIPTION = (
    'UCF-101 (101 actions) with a clean stream and an ASM-fogged stream made '
    'at build time; official train/test split.'
  )
  SOURCE_CITATION = """\
@article{soomro2012ucf101,
  title   = {{UCF101}: A Dataset of 101 Human Actions Classes From Videos in The Wild},
  author  = {Soomro, Khurram and Zamir, Amir Roshan and Shah, Mubarak},
  journal = {arXiv preprint arXiv:1212.0402},
  year    = {2012}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(
    name='ucf101_fog',
    layout="""
    UCF-101/<Class>/v_<Class>_gXX_cYY.avi     (UCF101.rar extracted; or UCF101/, videos/)
    ucfTrainTestlist/classInd.txt, trainlist01.txt, testlist01.txt
                                              (UCF101TrainTestSplits-RecognitionTask.zip)
""",
  )

  def _read_manual_dir(self, manual_dir):
    return splits.ucf101(manual_dir, self.builder_config.split_number)


class Hmdb51Fog(_FoggedPublicBuilder):
  """HMDB-51 with ASM fog (official 70/30 split 1-3)."""

  BUILDER_CONFIGS = _configs('HMDB-51 split 1')
  DESCRIPTION = (
    'HMDB-51 (51 actions) with a clean stream and an ASM-fogged stream made '
    'at build time; official 70/30 split (unused videos left out).'
  )
  SOURCE_CITATION = """\
@inproceedings{kuehne2011hmdb,
  title     = {{HMDB}: A Large Video Database for Human Motion Recognition},
  author    = {Kuehne, Hildegard and Jhuang, Hueihan and Garrote, Est{\\'\\i}baliz and
               Poggio, Tomaso and Serre, Thomas},
  booktitle = {2011 International Conference on Computer Vision},
  pages     = {2556--2563},
  publisher = {IEEE},
  year      = {2011}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(
    name='hmdb51_fog',
    layout="""
    hmdb51_org/<class>/<file>.avi             (each class .rar extracted; or videos/)
    testTrainMulti_7030_splits/<class>_test_split1.txt   lines "<file>.avi 0|1|2"
""",
  )

  def _read_manual_dir(self, manual_dir):
    return splits.hmdb51(manual_dir, self.builder_config.split_number)


class Kinetics100Fog(_FoggedPublicBuilder):
  """Kinetics-100 with ASM fog, from a list of (filename, label, split)."""

  BUILDER_CONFIGS = _configs('Kinetics-100')
  DESCRIPTION = (
    'Kinetics-100 (the 100-class Kinetics subset of the few-shot literature) '
    'with a clean stream and an ASM-fogged stream made at build time.'
  )
  SOURCE_CITATION = """\
@article{kay2017kinetics,
  title   = {The Kinetics Human Action Video Dataset},
  author  = {Kay, Will and Carreira, Joao and Simonyan, Karen and Zhang, Brian and
             Hillier, Chloe and Vijayanarasimhan, Sudheendra and Viola, Fabio and Green, Tim
             and Back, Trevor and Natsev, Paul and others},
  journal = {arXiv preprint arXiv:1705.06950},
  year    = {2017}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(
    name='kinetics100_fog',
    layout="""
    kinetics100.csv      header "filename,label,split"; filename relative to the manual
                         dir (e.g. videos/<label>/<youtube_id>.mp4); empty or missing
                         split = seeded 80/20 split stratified by class
    classes.txt          optional class order (default: sorted labels)
    <the videos the list names>
""",
  )

  def _read_manual_dir(self, manual_dir):
    config = self.builder_config
    classes, clips = splits.kinetics100(manual_dir)
    return classes, annotations.assign_splits(
      clips, seed=config.split_seed, test_fraction=config.test_fraction
    )
