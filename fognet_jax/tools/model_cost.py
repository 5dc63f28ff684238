r"""Parameter count and inference FLOPs of the model of a config, as one JSON line.

  python -m fognet_jax.tools.model_cost --config=configs/fogact.py
  python -m fognet_jax.tools.model_cost --config=configs/fogact.py:baseline --frames=8

The model is built abstractly (``nnx.eval_shape``: no weights are loaded or allocated; the
architecture is ``model.backbone`` + ``model.clip_overrides``, ``model.init_from`` is not
read). FLOPs come from XLA's cost analysis of the compiled foggy-only inference function
``model.predict(foggy (1, frames, size, size, 3), text_emb (C, D))``
(``jax.jit(f).lower(...).compile().cost_analysis()['flops']``). XLA counts a
multiply-add as **2** FLOPs (and element-wise ops as 1 each); most papers (fvcore / thop
counts, as in Table 3 of the paper) count a multiply-add as 1, so ``gmacs_inference``
(= flops / 2) is the number to put beside them. The class text embeddings are precomputed
at inference and are an input of ``predict``; the text tower's cost is reported separately
per prompt. The compilation always targets the host CPU (inputs placed on a CPU device),
also on a GPU machine: XLA's GPU cost analysis leaves out the GEMMs it hands to
cuBLAS / cuDNN (it reported 23 GFLOPs instead of 283 for FogNet ViT-B/16 on an H200).
``gmacs_vision_analytic`` is a hand count of the image tower's multiply-adds as papers
count them (every layer for every token); ``gmacs_vision_computed`` the same count for what
the tower computes (the last layer for the class token only, see ``docs/clip.md``), the
cross-check of XLA's number.

Fields: params_trainable (all ``nnx.Param`` scalars: both towers, logit scale, FogNet
modules), params_visual, params_text (incl. token_embedding, also given alone),
params_heads (FAS + ME + temporal transformer), gflops_inference (XLA, multiply-add
= 2), gmacs_inference, gflops_text_per_prompt, gmacs_vision_analytic,
gmacs_vision_computed, plus the shape used.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow 2.21 on AVX-512 CPUs logs a oneDNN line at import that TF_CPP_MIN_LOG_LEVEL does not hide.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fognet_jax import config_lib  # noqa: E402
from fognet_jax import weights  # noqa: E402
from fognet_jax.models import clip  # noqa: E402


def _define_flags() -> None:
  """Command-line flags; defined only when run as a program, so that importing this module
  (for `measure` or the hand counts) leaves the global absl flags (e.g. --config) alone."""
  config_flags.DEFINE_config_file(
    'config', None, 'Config file (with a `model` block).', lock_config=False
  )
  flags.DEFINE_integer('frames', 8, 'Frames of the inference clip.')
  flags.DEFINE_integer('image_size', 224, 'Frame side of the inference clip.')
  flags.DEFINE_integer('num_classes', 10, 'Classes in the text-embedding input.')


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  if not analysis or 'flops' not in analysis:
    raise RuntimeError("XLA cost analysis returned no 'flops' entry on this backend")
  return float(analysis['flops'])


def resnet_macs_analytic(clip_cfg, image_size: int) -> float:
  """Multiply-adds of one image through a ModifiedResNet tower (convolutions, attention pool)."""
  w = clip_cfg.vision_width
  r = image_size // 2
  macs = r * r * 9 * (3 * (w // 2) + (w // 2) ** 2 + (w // 2) * w)  # stem, at half resolution
  r //= 2  # stem average pool
  cin = w
  for i, blocks in enumerate(clip_cfg.vision_layers):
    p = w * 2**i
    for b in range(blocks):
      stride = 2 if (i > 0 and b == 0) else 1
      r_out = r // stride
      macs += r * r * (cin * p + 9 * p * p) + r_out * r_out * p * 4 * p
      if stride > 1 or cin != 4 * p:
        macs += r_out * r_out * cin * 4 * p
      cin, r = 4 * p, r_out
  n, d = r * r + 1, 32 * w
  macs += 2 * n * d * d + d * d + 2 * n * d + d * clip_cfg.embed_dim  # k, v, q, attention, c_proj
  return float(macs)


def vision_macs_analytic(
  clip_cfg, frames: int, image_size: int, *, pooled_last_layer: bool = False
) -> float:
  """Multiply-adds of the CLIP image tower on ``frames`` images (matmuls and patch conv).

  By default every layer is counted for every token, as papers count a ViT (the model's
  FLOPs). ``pooled_last_layer=True`` counts what ``clip.VisionTransformer`` computes: the last
  layer's keys and values for every token, its query, attention, output projection and MLP
  for the class token only (the only token read).
  """
  if clip_cfg.is_resnet:
    return float(frames * resnet_macs_analytic(clip_cfg, image_size))
  g = image_size // clip_cfg.patch_size
  n, w, m = g * g + 1, clip_cfg.vision_width, clip_cfg.vision_mlp
  per_layer = 4 * n * w * w + 2 * n * n * w + 2 * n * w * m
  last = per_layer
  if pooled_last_layer:
    last = 2 * n * w * w + 2 * w * w + 2 * n * w + 2 * w * m  # k, v; q, out; attention; MLP
  per_image = (
    g * g * clip_cfg.patch_size**2 * 3 * w
    + (clip_cfg.vision_layers - 1) * per_layer
    + last
    + w * clip_cfg.embed_dim
  )
  return float(frames * per_image)


def measure(
  model_cfg, *, frames: int = 8, image_size: int = 224, num_classes: int = 10
) -> dict[str, Any]:
  """Parameter counts and XLA FLOPs of one foggy-only inference (see module docstring)."""
  cfg = model_cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.init_from = None  # cost of the architecture; weights are not needed
  config_lib.validate_model(cfg)
  if image_size <= 0 or frames <= 0 or num_classes <= 0:
    raise ValueError('--frames, --image_size and --num_classes must be positive')
  # attention_impl 'xla': compiled for the CPU (see the module docstring)
  model = nnx.eval_shape(lambda: weights.create_model(cfg, rngs=nnx.Rngs(0), attention_impl='xla'))
  graphdef, state = nnx.split(model)
  params = nnx.state(model, nnx.Param)
  clip_cfg = model.clip.config
  stride = 32 if clip_cfg.is_resnet else clip_cfg.patch_size
  if image_size % stride:
    raise ValueError(
      f'--image_size={image_size} is not a multiple of the patch size / stride '
      f'{stride} of model.backbone={cfg.backbone!r}'
    )
  n_visual = clip.count_params(model.clip.visual)
  n_text = clip.count_params(model.clip.text)
  n_tok = clip.count_params(model.clip.text.token_embedding)
  n_total = clip.count_params(params)
  n_heads = sum(
    clip.count_params(m) for m in (model.fas, model.me, model.temporal) if m is not None
  )

  d = clip_cfg.embed_dim
  on_cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=on_cpu)
  foggy = spec((1, frames, image_size, image_size, 3), jnp.float32)
  text = spec((num_classes, d), jnp.float32)
  tokens = spec((1, clip_cfg.context_length), jnp.int32)
  state = jax.tree.map(lambda x: spec(x.shape, x.dtype), state)

  def predict(state, foggy, text):
    return nnx.merge(graphdef, state).predict(foggy, text)

  def encode_text(state, tokens):
    return nnx.merge(graphdef, state).encode_text(tokens)

  flops = _flops(jax.jit(predict).lower(state, foggy, text).compile())
  text_flops = _flops(jax.jit(encode_text).lower(state, tokens).compile())
  return {
    'backbone': cfg.backbone,
    'arch': cfg.arch,
    'fas': bool(cfg.fas.enabled),
    'me': bool(cfg.me.enabled),
    'csa': bool(cfg.csa.enabled),
    'temporal_fusion': cfg.temporal_fusion,
    'input': [1, frames, image_size, image_size, 3],
    'num_classes': num_classes,
    'params_trainable': n_total,
    'params_visual': n_visual,
    'params_text': n_text,
    'params_text_token_embedding': n_tok,
    'params_heads': n_heads,
    'gflops_inference': round(flops / 1e9, 3),
    'gmacs_inference': round(flops / 2e9, 3),
    'gflops_text_per_prompt': round(text_flops / 1e9, 3),
    'gmacs_vision_analytic': round(vision_macs_analytic(clip_cfg, frames, image_size) / 1e9, 3),
    'gmacs_vision_computed': round(
      vision_macs_analytic(clip_cfg, frames, image_size, pooled_last_layer=True) / 1e9, 3
    ),
    'flops_convention': 'XLA cost analysis; multiply-add = 2 flops; gmacs = gflops / 2',
    'backend': 'cpu',
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  fv = flags.FLAGS
  config = fv.config
  if config is None:
    raise app.UsageError('--config is required (a file whose get_config() has a `model` block)')
  if 'model' not in config:
    raise ValueError(f'config {fv["config"].config_filename!r} has no `model` block')
  result = measure(
    config.model, frames=fv.frames, image_size=fv.image_size, num_classes=fv.num_classes
  )
  result['config'] = fv['config'].config_filename
  sys.stdout.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
