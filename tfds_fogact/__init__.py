"""TFDS builders of paired clean/foggy action videos.

Importing this package registers the builders with TFDS:

* ``synthetic_fog_act``: generated paired benchmark (no download).
* ``fogact`` (``tfds_fogact/fogact/``): FogAct, manual download.
* ``ucf101_fog``, ``hmdb51_fog``, ``kinetics100_fog`` (``tfds_fogact/fogged_public/``):
  UCF-101, HMDB-51, Kinetics-100 fogged at build time, manual download.

A builder package is imported when its folder exists; each package's
``__init__`` imports its builder module(s), which registers them. The plain
modules next to them are the builders' shared code: ``common`` (features,
``PERSPECTIVES`` / ``FOG_LEVELS``, preparation, random access), ``fog`` (ASM fog
synthesis) and ``video_io`` (PyAV decoding and writing); only ``BUILDER_PACKAGES``
are imported by the loop below.
"""

import importlib as _importlib
import pathlib as _pathlib

from tfds_fogact import common  # noqa: F401

_HERE = _pathlib.Path(__file__).resolve().parent
BUILDER_PACKAGES = ('synthetic_fog_act', 'fogact', 'fogged_public')

for _name in BUILDER_PACKAGES:
  if (_HERE / _name / '__init__.py').is_file():
    _importlib.import_module(f'{__name__}.{_name}')
