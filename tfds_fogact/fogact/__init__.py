"""FogAct builder (``fogact``): real paired clean/foggy videos, manual download."""

from tfds_fogact.fogact.fogact_dataset_builder import Builder  # noqa: F401
from tfds_fogact.fogact.fogact_dataset_builder import FogActConfig  # noqa: F401
