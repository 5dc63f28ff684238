"""Command-line tools (python -m fognet_jax.tools.NAME)."""
