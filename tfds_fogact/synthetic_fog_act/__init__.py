"""The generated paired benchmark `synthetic_fog_act` (registered on import)."""

from tfds_fogact.synthetic_fog_act.synthetic_fog_act_dataset_builder import SyntheticFogAct  # noqa: F401
