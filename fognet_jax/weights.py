"""The model of a config's ``model`` block: CLIP towers, random or loaded, then FogNet.

``models/`` holds the modules, which take explicit arguments; this module reads the config
and the disk. With ``model.init_from`` set, the CLIP towers are loaded with
``clip_weights.load`` (an OpenAI ``.pt``, a Hugging Face directory, an Orbax directory
written by ``clip_weights.save``, or a hub name; ``model.clip_overrides`` must then be
empty); otherwise ``model.backbone`` with ``model.clip_overrides`` is initialised from the
random streams. The FAS / ME / temporal parameters are then initialised from the same
streams and the towers handed to :class:`fognet.FogNet`.

Typical use::

    model = weights.create_model(config.model, rngs=nnx.Rngs(config.seed))
"""

from __future__ import annotations

from typing import Any

import ml_collections
from flax import nnx

from fognet_jax import clip_weights
from fognet_jax.models import blocks
from fognet_jax.models import clip
from fognet_jax.models import fognet


def clip_overrides(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The non-None entries of ``model.clip_overrides`` as a plain dict."""
  ov = model_cfg.get('clip_overrides') or {}
  return {k: v for k, v in dict(ov).items() if v is not None}


def clip_config(model_cfg: ml_collections.ConfigDict) -> clip.CLIPConfig:
  """The CLIP architecture of a randomly initialised model: ``model.backbone`` with
  ``model.clip_overrides``."""
  try:
    return clip.get_config(model_cfg.backbone, **clip_overrides(model_cfg))
  except (ValueError, TypeError) as e:
    raise ValueError(f'config keys model.backbone / model.clip_overrides: {e}') from e


def clip_towers(
  model_cfg: ml_collections.ConfigDict,
  *,
  rngs: nnx.Rngs,
  attention_impl: str | None = None,
  residual_dtype: str | None = None,
) -> clip.CLIP:
  """The CLIP towers: loaded from ``model.init_from``, or random from ``rngs``.
  ``attention_impl`` and ``residual_dtype`` are the config's ``perf`` options."""
  kwargs = dict(
    dtype=clip.canonical_dtype(model_cfg.dtype),
    remat=bool(model_cfg.remat),
    attention_impl=attention_impl,
    residual_dtype=residual_dtype,
  )
  if model_cfg.get('init_from'):
    return clip_weights.load(model_cfg.init_from, **kwargs)
  return clip.CLIP(clip_config(model_cfg), rngs=rngs, **kwargs)


def fognet_kwargs(
  model_cfg: ml_collections.ConfigDict, embed_dim: int, *, attention_impl: str | None = None
) -> dict[str, Any]:
  """:class:`fognet.FogNet`'s arguments from the ``model`` block, for towers of width
  ``embed_dim``.

  Raises:
    ValueError: a head count that does not divide ``embed_dim``, naming its config key.
  """
  m = model_cfg
  two = m.arch == 'fognet'
  fas = me = None
  if two and m.fas.enabled:
    # A config without `concat` is a run's config.json from before the key existed: 'tokens'.
    fas = blocks.FASOptions(
      parameter_free=bool(m.fas.parameter_free),
      num_heads=int(m.fas.num_heads),
      temperature=float(m.fas.temperature),
      init_scale=float(m.fas.init_scale),
      concat=m.fas.get('concat', 'tokens'),
    )
  if two and m.me.enabled:
    me = blocks.MEOptions(
      shared_weights=bool(m.me.shared_weights),
      num_heads=int(m.me.num_heads),
      init_scale=float(m.me.init_scale),
    )
  heads = {}
  if fas is not None and not fas.parameter_free:
    heads['model.fas.num_heads'] = fas.num_heads
  if me is not None:
    heads['model.me.num_heads'] = me.num_heads
  if m.temporal_fusion == 'transformer':
    heads['model.temporal_heads'] = m.get('temporal_heads') or max(1, embed_dim // 64)
  for key, n in heads.items():
    if embed_dim % n:
      raise ValueError(f'config key {key}: {n} does not divide the embedding width {embed_dim}')
  return dict(
    arch=str(m.arch),
    fas=fas,
    me=me,
    train_stream=str(m.get('train_stream', 'foggy')),
    temporal_fusion=str(m.temporal_fusion),
    temporal_layers=int(m.temporal_layers),
    temporal_heads=m.get('temporal_heads'),
    max_frames=int(m.max_frames),
    frame_centering=bool(m.get('frame_centering', False)),
    dtype=m.dtype,
    remat=bool(m.remat),
    attention_impl=attention_impl,
  )


def fognet_model(
  model_cfg: ml_collections.ConfigDict,
  towers: clip.CLIP,
  *,
  rngs: nnx.Rngs,
  attention_impl: str | None = None,
) -> fognet.FogNet:
  """FogNet / ActionCLIP of the ``model`` block on the given CLIP towers."""
  kwargs = fognet_kwargs(model_cfg, towers.config.embed_dim, attention_impl=attention_impl)
  return fognet.FogNet(towers, **kwargs, rngs=rngs)


def create_model(
  model_cfg: ml_collections.ConfigDict,
  *,
  rngs: nnx.Rngs,
  attention_impl: str | None = None,
  residual_dtype: str | None = None,
) -> fognet.FogNet:
  """Builds FogNet / ActionCLIP from the ``model`` block: :func:`clip_towers`, then the
  FAS / ME / temporal parameters from the same ``rngs``. ``attention_impl`` and
  ``residual_dtype`` are the config's ``perf`` options (None: the defaults)."""
  towers = clip_towers(
    model_cfg, rngs=rngs, attention_impl=attention_impl, residual_dtype=residual_dtype
  )
  return fognet_model(model_cfg, towers, rngs=rngs, attention_impl=attention_impl)
