"""Fogged public datasets: ``ucf101_fog``, ``hmdb51_fog``, ``kinetics100_fog``."""
from tfds_fogact.fogged_public.fogged_public import (  # noqa: F401
    FoggedConfig, Hmdb51Fog, Kinetics100Fog, Ucf101Fog)
