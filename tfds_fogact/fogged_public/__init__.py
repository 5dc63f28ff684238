"""Fogged public datasets: ``ucf101_fog``, ``hmdb51_fog``, ``kinetics100_fog``."""

from tfds_fogact.fogged_public.fogged_public import FoggedConfig  # noqa: F401
from tfds_fogact.fogged_public.fogged_public import Hmdb51Fog  # noqa: F401
from tfds_fogact.fogged_public.fogged_public import Kinetics100Fog  # noqa: F401
from tfds_fogact.fogged_public.fogged_public import Ucf101Fog  # noqa: F401
