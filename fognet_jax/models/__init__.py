"""Model definitions: CLIP towers and FogNet."""
