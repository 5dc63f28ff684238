"""fognet_jax: FogNet (fog-invariant video action recognition) in JAX/Flax."""

__version__ = '0.1.0'
