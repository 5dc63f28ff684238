r"""Train-step throughput (clip pairs/s), MFU and memory of FogNet; optionally against PyTorch.

Builds the real model (random initialisation; no weights needed), the real loss and the
sharded jitted train step of `fognet_jax.train`, feeds random paired clips and measures
steady-state steps/s over all devices. Each variant (fp32 / bf16, remat off / on) is measured
in the same process, and the table gives throughput and memory as ratios to the first one.

MFU: analytic FLOPs of one train step (`train_step_flops`: the towers' matmuls, 3 x forward)
over the step time and the devices' dense peak (`PEAK_FLOPS`, matched on `device_kind`, at the
variant's dtype; `--peak_flops` overrides it, and is the only source on a CPU: else 'n/a').

--compare_torch: the project's PyTorch reference of the same step
(`benchmarks/torch_reference.py`: transformers CLIPModel, SDPA, same shapes and dtype) runs in
the same process, in the `--torch_modes` forms (eager, compile). Measurements alternate (ours,
torch eager, torch compile, ours, ... for `--repeats`), since shared machines are noisy; the
table gives every repeat and ours / torch as the ratio of the medians of clip pairs/s. On a
GPU, JAX's memory preallocation is switched off so that both frameworks fit; each torch
measurement returns its cached blocks before the next one. When ours and torch do not both fit
on the device at once, use `--repeats=1 --order=torch_first` (torch runs before our first step).

Host memory: the table's header and the JSON give the `GLIBC_TUNABLES` the process ran with
(e.g. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` for transparent huge pages, docs/training.md).

--profile_dir=DIR: after the timing, a `jax.profiler` trace of `--profile_steps` steps per
variant (DIR/<variant>/), and the top ops by self time from its Perfetto trace
(`profile_step.py`; also runnable on an existing trace directory).

  # CPU, tiny (seconds):
  python benchmarks/train_step.py --backbone=tiny --image_size=32 --frames=2 --batch=4 \
      --steps=3 --variants=fp32,bf16,fp32+remat --json_out=/tmp/train_step.json
  python benchmarks/train_step.py --backbone=tiny --image_size=32 --frames=2 --batch=4 \
      --steps=3 --variants=fp32 --compare_torch --torch_modes=eager,compile --repeats=2 \
      --profile_dir=/tmp/prof --peak_flops=1e11
  # GPU, paper scale:
  python benchmarks/train_step.py --backbone=ViT-B/16 --image_size=224 --frames=8 --batch=16 \
      --variants=bf16,bf16+remat,fp32 --json_out=benchmarks/train_step_h200.json
  python benchmarks/train_step.py --backbone=ViT-B/16 --image_size=224 --frames=8 --batch=16 \
      --variants=bf16 --compare_torch --repeats=2 --profile_dir=/tmp/prof
"""

import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

_BACKBONE = flags.DEFINE_string('backbone', 'tiny', 'CLIP backbone name (clip.CONFIGS key).')
_IMAGE = flags.DEFINE_integer('image_size', 32, 'Frame resolution.')
_FRAMES = flags.DEFINE_integer('frames', 2, 'Frames per clip.')
_BATCH = flags.DEFINE_integer('batch', 4, 'Global batch (clip pairs per step).')
_CLASSES = flags.DEFINE_integer('classes', 55, 'Number of classes (text prompts per step).')
_PROMPT_LEN = flags.DEFINE_integer(
  'prompt_len',
  77,
  'Tokens up to and including end-of-text in every prompt (2..77); the '
  'rest of the 77 is zero padding, as clip.tokenize writes it. Ours trims the padding '
  '(prompts.trim_context, as training does); the torch reference encodes all 77.',
)
_VOCAB = flags.DEFINE_integer(
  'vocab_size',
  None,
  'Text vocabulary (model.clip_overrides.vocab_size); default the '
  "backbone's, 49408. 259 is the embedded demo's byte tokenizer (configs/synthetic.py).",
)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per variant (per repeat).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps before each timing.')
_VARIANTS = flags.DEFINE_list(
  'variants',
  ['fp32', 'bf16', 'fp32+remat', 'bf16+remat'],
  'Variants: dtype (fp32|bf16) with optional +remat, +fsdp, +cudnn, '
  '+res16 (bf16 only: a bfloat16 residual stream).',
)
_ARCH = flags.DEFINE_enum('arch', 'fognet', ['fognet', 'actionclip'], 'Model architecture.')
_ACCUM = flags.DEFINE_integer('accum', 1, 'Gradient accumulation micro-batches.')
_FREEZE_TEXT = flags.DEFINE_bool('freeze_text', False, 'Freeze the text tower.')
_ATTN = flags.DEFINE_string(
  'attention_impl', None, "perf.attention_impl: None (automatic), 'xla' or 'cudnn'."
)
_JSON = flags.DEFINE_string('json_out', None, 'Write the results as JSON here.')
_PEAK = flags.DEFINE_float(
  'peak_flops', None, 'Peak FLOP/s of one device for MFU; overrides the PEAK_FLOPS table.'
)
_CHECK_XLA = flags.DEFINE_bool(
  'check_flops_xla',
  False,
  "Also compare the analytic forward FLOPs with XLA's cost "
  'analysis (fognet_jax.tools.model_cost; compiles on the CPU).',
)
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Timings per variant (alternating with torch).')
_COMPARE = flags.DEFINE_bool(
  'compare_torch', False, 'Also time the PyTorch reference (benchmarks/torch_reference.py).'
)
_TORCH_MODES = flags.DEFINE_list(
  'torch_modes', ['eager', 'compile'], 'PyTorch reference forms: eager, compile.'
)
_ORDER = flags.DEFINE_enum(
  'order', 'ours_first', ['ours_first', 'torch_first'], 'Order inside each repeat.'
)
_PROFILE_DIR = flags.DEFINE_string(
  'profile_dir',
  None,
  'Write a jax.profiler trace per variant here and print the top ops by self time.',
)
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 3, 'Steps in the profiler trace.')
_TOP = flags.DEFINE_integer('top', 20, 'Ops in the profile table.')

# Dense peak FLOP/s of one device: (device_kind substring, lower case; bf16; fp32 matmuls).
# First match wins, so specific names come before general ones. fp32 on NVIDIA is the TF32
# tensor-core rate (XLA's default precision for fp32 dots there); on TPUs XLA's default
# precision runs fp32 dots as one bf16 pass, so both columns are the bf16 rate.
PEAK_FLOPS = (
  ('h100 pcie', 756e12, 378e12),
  ('h100', 989e12, 494.7e12),  # SXM
  ('h200', 989e12, 494.7e12),
  ('a100', 312e12, 156e12),
  ('tpu v4', 275e12, 275e12),
  ('tpu v5 lite', 197e12, 197e12),
  ('tpu v5e', 197e12, 197e12),
  ('tpu v5p', 459e12, 459e12),
  ('tpu v5', 459e12, 459e12),
  ('tpu v6 lite', 918e12, 918e12),
  ('tpu v6e', 918e12, 918e12),
)


def peak_flops_per_device(device_kind: str, dtype: str, override: float | None = None):
  """(peak FLOP/s, source) of one device for `dtype` ('bf16' | 'fp32'); (None, why) if unknown."""
  if override is not None:
    if override <= 0:
      raise ValueError(f'--peak_flops must be positive, got {override}')
    return float(override), '--peak_flops'
  kind = device_kind.lower()
  for key, bf16, fp32 in PEAK_FLOPS:
    if key in kind:
      return (bf16 if dtype == 'bf16' else fp32), f'table[{key!r}]'
  return None, f'no peak known for device_kind {device_kind!r} (pass --peak_flops)'


def vit_forward_flops(clip_cfg, image_size: int) -> float:
  """Forward FLOPs of one image through the CLIP image tower (multiply-add = 2 FLOPs).

  ViT with n = (image_size / patch)^2 + 1 tokens, width w, MLP width m, L layers:
    patch conv      2 * g^2 * (p^2 * 3) * w
    per layer       2 * (4 n w^2  [q, k, v, out projections]
                         + 2 n^2 w  [Q K^T and A V over all heads]
                         + 2 n w m) [MLP]
    projection      2 * w * embed_dim   (class token only)
  LayerNorms, softmax, activations and biases are left out (under 1 % at ViT-B/16). ResNet
  towers use `model_cost.resnet_macs_analytic` x 2.
  """
  from fognet_jax.tools import model_cost  # pylint: disable=g-import-not-at-top

  if clip_cfg.is_resnet:
    return 2.0 * model_cost.resnet_macs_analytic(clip_cfg, image_size)
  p = clip_cfg.patch_size
  g = image_size // p
  n, w = g * g + 1, clip_cfg.vision_width
  m = clip_cfg.vision_mlp_dim or 4 * w
  per_layer = 4 * n * w * w + 2 * n * n * w + 2 * n * w * m
  macs = g * g * p * p * 3 * w + clip_cfg.vision_layers * per_layer + w * clip_cfg.embed_dim
  return 2.0 * macs


def text_forward_flops(clip_cfg, length: int | None = None) -> float:
  """Forward FLOPs of one prompt (`length` tokens, default context_length) through the
  CLIP text tower.

  Same per-layer count as `vit_forward_flops` with n = context_length (77): the causal mask
  does not shrink XLA's or SDPA's dense attention matmuls, so Q K^T and A V count in full.
  Plus the projection of the end-of-text token. The token embedding is a gather (0 FLOPs).
  """
  n, w = length or clip_cfg.context_length, clip_cfg.text_width
  m = clip_cfg.text_mlp_dim or 4 * w
  per_layer = 4 * n * w * w + 2 * n * n * w + 2 * n * w * m
  return 2.0 * (clip_cfg.text_layers * per_layer + w * clip_cfg.embed_dim)


def train_step_flops(
  clip_cfg,
  *,
  image_size: int,
  frames: int,
  batch: int,
  classes: int,
  streams: int,
  text_trainable: bool = True,
  prompt_len: int | None = None,
) -> dict:
  """Analytic FLOPs of one train step (multiply-add = 2 FLOPs).

    image = vit_forward_flops(image_size) * frames * streams * batch
    text  = text_forward_flops * classes        (one prompt of 77 tokens per class)
    step  = 3 * image + (3 if text_trainable else 1) * text

  3 x forward = forward + backward (input and weight gradients, each as costly as the
  forward matmuls). `streams` is 2 for FogNet (clean and foggy clips), 1 for ActionCLIP on one
  stream. FAS / ME / CSA / temporal heads, losses and the optimizer are left out (FogNet's
  heads: about 0.02 GMACs per clip against 282 GMACs of the towers at ViT-B/16, 8 x 224^2).
  Gradient accumulation does not change the count (the same clips pass once).
  """
  img = vit_forward_flops(clip_cfg, image_size) * frames * streams * batch
  txt = text_forward_flops(clip_cfg, prompt_len) * classes
  total = 3.0 * img + (3.0 if text_trainable else 1.0) * txt
  return {
    'image_forward_flops': img,
    'text_forward_flops': txt,
    'step_flops': total,
    'image_forward_flops_per_frame': vit_forward_flops(clip_cfg, image_size),
    'text_forward_flops_per_prompt': text_forward_flops(clip_cfg, prompt_len),
  }


def check_flops_units(clip_cfg, image_size: int) -> None:
  """The per-image count must be twice `model_cost.vision_macs_analytic` (MACs)."""
  from fognet_jax.tools import model_cost  # pylint: disable=g-import-not-at-top

  macs = model_cost.vision_macs_analytic(clip_cfg, 1, image_size)
  ours = vit_forward_flops(clip_cfg, image_size)
  if not np.isclose(ours, 2.0 * macs, rtol=1e-9):
    raise AssertionError(
      f'vit_forward_flops={ours:.6g} but 2 x model_cost.vision_macs_analytic'
      f'={2 * macs:.6g}: the two hand counts disagree'
    )


def _streams(cfg) -> int:
  if cfg.model.arch == 'fognet':
    return 2
  return 2 if cfg.model.get('train_stream', 'foggy') == 'clean+foggy' else 1


def _config(variant: str):
  from fognet_jax import config_lib  # pylint: disable=g-import-not-at-top

  parts = variant.split('+')
  if parts[0] not in ('fp32', 'bf16'):
    raise ValueError(f'--variants: {variant!r} must start with fp32 or bf16')
  unknown = sorted(set(parts[1:]) - {'remat', 'fsdp', 'cudnn', 'res16'})
  if unknown:
    raise ValueError(
      f'--variants: unknown modifier(s) {unknown} in {variant!r} (remat, fsdp, cudnn, res16)'
    )
  if 'res16' in parts and parts[0] != 'bf16':
    raise ValueError(f'--variants: {variant!r}: res16 (a bfloat16 residual stream) needs bf16')
  cfg = config_lib.load_config('fogact')
  cfg.model.backbone = _BACKBONE.value
  cfg.model.init_from = None
  cfg.model.arch = _ARCH.value
  cfg.model.dtype = {'fp32': 'float32', 'bf16': 'bfloat16'}[parts[0]]
  cfg.model.remat = 'remat' in parts
  if _ATTN.value:
    cfg.perf.attention_impl = _ATTN.value
  if 'cudnn' in parts:  # cuDNN fused attention (sequences padded to a multiple of 64)
    cfg.perf.attention_impl = 'cudnn'
  if 'res16' in parts:  # the towers' residual stream in bfloat16 too
    cfg.perf.residual_dtype = 'bfloat16'
  cfg.mesh.fsdp = 'fsdp' in parts
  cfg.model.clip_overrides.image_size = _IMAGE.value
  cfg.model.clip_overrides.vocab_size = _VOCAB.value
  cfg.data.num_frames = _FRAMES.value
  cfg.data.image_size = _IMAGE.value
  cfg.train.batch_size = _BATCH.value
  cfg.train.grad_accum_steps = _ACCUM.value
  cfg.train.freeze_text = _FREEZE_TEXT.value
  cfg.train.num_train_steps = 1000
  cfg.train.warmup_epochs = 0.0
  return cfg


def _memory(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
    total = (
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      + m.temp_size_in_bytes
      - m.alias_size_in_bytes
    )
    return {
      'xla_total_bytes': int(total),
      'xla_temp_bytes': int(m.temp_size_in_bytes),
      'xla_argument_bytes': int(m.argument_size_in_bytes),
    }
  except Exception:  # pylint: disable=broad-except
    return {}


def _device_peak() -> int | None:
  try:
    stats = jax.local_devices()[0].memory_stats()
    return int(stats.get('peak_bytes_in_use')) if stats else None
  except Exception:  # pylint: disable=broad-except
    return None


class OurStep:
  """Our compiled train step of one variant, its state and a fixed batch."""

  def __init__(self, variant: str):
    from fognet_jax import augment  # pylint: disable=g-import-not-at-top
    from fognet_jax import config_lib  # pylint: disable=g-import-not-at-top
    from fognet_jax import losses  # pylint: disable=g-import-not-at-top
    from fognet_jax import main as main_lib  # pylint: disable=g-import-not-at-top
    from fognet_jax import optim  # pylint: disable=g-import-not-at-top
    from fognet_jax import sharding  # pylint: disable=g-import-not-at-top
    from fognet_jax import train  # pylint: disable=g-import-not-at-top
    from fognet_jax.models import clip  # pylint: disable=g-import-not-at-top

    self.variant = variant
    cfg = _config(variant)
    mesh = sharding.make_mesh(-1)
    config_lib.validate(cfg, num_devices=mesh.size)
    model = main_lib.create_model(cfg)
    self.clip_cfg = model.clip.config
    self.streams = _streams(cfg)
    schedule = optim.make_schedule(cfg.train, 1000, 0)
    graphdef, self.state, shardings, tx = train.build_state(cfg, mesh, model, schedule)
    self.params = clip.count_params(self.state.params)
    del model
    loss_fn = losses.make_loss_fn(cfg)
    self.step = train.make_train_step(
      graphdef,
      tx,
      mesh=mesh,
      state_shardings=shardings,
      loss_fn=loss_fn,
      schedule=schedule,
      seed=0,
      grad_accum_steps=cfg.train.grad_accum_steps,
      freeze_text=cfg.train.freeze_text,
    )
    rng = np.random.default_rng(0)
    b, t, s = _BATCH.value, _FRAMES.value, _IMAGE.value
    from fognet_jax import prompts  # pylint: disable=g-import-not-at-top

    eot = self.clip_cfg.vocab_size - 1  # the text tower pools at the largest id
    tokens = rng.integers(1, min(400, eot), size=(16, _CLASSES.value, 77)).astype(np.int32)
    tokens[..., _PROMPT_LEN.value - 1] = eot
    tokens[..., _PROMPT_LEN.value :] = 0  # padding
    tokens = prompts.trim_context(tokens)  # (16, C, prompt_len), as main.setup does
    self.tokens = jax.device_put(jnp.asarray(tokens), sharding.replicated(mesh))
    if cfg.perf.pixels_on_device:  # what training sends: uint8 frames + colour chains
      jitter = [augment.sample_color_jitter(rng, cfg.data.augment) for _ in range(b)]
      batch = {
        'clean': rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
        'foggy': rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
        'color': np.stack([augment.color_affines(c) for c in jitter]),
      }
    else:
      batch = {
        'clean': rng.normal(size=(b, t, s, s, 3)).astype(np.float32),
        'foggy': rng.normal(size=(b, t, s, s, 3)).astype(np.float32),
      }
    batch['label'] = (np.arange(b) % _CLASSES.value).astype(np.int32)
    self.batch = sharding.put_global_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = self.step.lower(self.state, self.batch, self.tokens).compile()
    self.compile_s = time.perf_counter() - t0
    self.memory = _memory(compiled)
    self.hlo_text = compiled.as_text() if _PROFILE_DIR.value else None

  def run(self, n: int):
    metrics = None
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch, self.tokens)
    return metrics

  def time(self, *, steps: int, warmup: int) -> dict:
    if warmup:
      jax.block_until_ready(self.run(warmup))
    t0 = time.perf_counter()
    metrics = self.run(steps)
    jax.block_until_ready((self.state, metrics))
    dt = (time.perf_counter() - t0) / steps
    return {'step_s': dt, 'clip_pairs_per_s': _BATCH.value / dt, 'loss': float(metrics['loss'])}

  def profile(self, logdir: str, steps: int) -> None:
    jax.block_until_ready(self.run(1))
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      jax.block_until_ready(self.run(steps))


def _median(rows, key='clip_pairs_per_s'):
  return statistics.median(r[key] for r in rows) if rows else None


def run_variant(variant: str, devices) -> dict:
  dtype = variant.split('+')[0]
  ours = OurStep(variant)
  check_flops_units(ours.clip_cfg, _IMAGE.value)
  flops = train_step_flops(
    ours.clip_cfg,
    image_size=_IMAGE.value,
    frames=_FRAMES.value,
    batch=_BATCH.value,
    classes=_CLASSES.value,
    streams=ours.streams,
    text_trainable=not _FREEZE_TEXT.value,
    prompt_len=_PROMPT_LEN.value,
  )
  peak, peak_source = peak_flops_per_device(devices[0].device_kind, dtype, _PEAK.value)
  ref = None
  if _COMPARE.value:
    import torch_reference  # pylint: disable=g-import-not-at-top

    ref = torch_reference.build_reference(
      backbone=_BACKBONE.value,
      arch=_ARCH.value,
      image_size=_IMAGE.value,
      frames=_FRAMES.value,
      batch=_BATCH.value,
      classes=_CLASSES.value,
      dtype=dtype,
      modes=tuple(_TORCH_MODES.value),
      prompt_len=_PROMPT_LEN.value,
      vocab_size=ours.clip_cfg.vocab_size,
    )
  timings = []

  def time_ours(r):
    res = ours.time(steps=_STEPS.value, warmup=_WARMUP.value)
    timings.append({'impl': 'ours', 'repeat': r, **res})

  def time_torch(r):
    for mode in _TORCH_MODES.value:
      try:
        res = ref.time(mode, steps=_STEPS.value, warmup=_WARMUP.value)
      except RuntimeError as e:  # e.g. CUDA out of memory next to our step's buffers
        print(f'torch {mode} failed in repeat {r}: {str(e).splitlines()[0]}', file=sys.stderr)
        res = {'error': str(e).splitlines()[0]}
      timings.append({'impl': f'torch-{mode}', 'repeat': r, **res})
      ref.release()

  for r in range(_REPEATS.value):
    order = [time_ours, time_torch] if _ORDER.value == 'ours_first' else [time_torch, time_ours]
    for fn in order:
      if fn is time_torch and ref is None:
        continue
      print(f'  {variant}: repeat {r}, {fn.__name__[5:]} ...', file=sys.stderr, flush=True)
      fn(r)
  n_dev = len(devices)
  for t in timings:
    if 'step_s' in t:
      t['tflops_per_s'] = flops['step_flops'] / t['step_s'] / 1e12
      t['mfu'] = (flops['step_flops'] / t['step_s'] / (peak * n_dev)) if peak else None
  ours_rows = [t for t in timings if t['impl'] == 'ours']
  med = _median(ours_rows)
  result = {
    'variant': variant,
    'params': ours.params,
    'compile_s': ours.compile_s,
    'step_s': _BATCH.value / med,
    'clip_pairs_per_s': med,
    'loss': ours_rows[-1]['loss'],
    'step_tflops': flops['step_flops'] / 1e12,
    'flops': flops,
    'peak_flops_per_device': peak,
    'peak_source': peak_source,
    'tflops_per_s': flops['step_flops'] * med / _BATCH.value / 1e12,
    'mfu': (flops['step_flops'] * med / _BATCH.value / (peak * n_dev)) if peak else None,
    'device_peak_bytes_so_far': _device_peak(),
    **ours.memory,
    'timings': timings,
  }
  if ref is not None:
    result['torch'] = {'params': ref.params, 'first_step_s': dict(ref.first_step_s)}
    for mode in _TORCH_MODES.value:
      rows = [t for t in timings if t['impl'] == f'torch-{mode}' and 'step_s' in t]
      tm = _median(rows)
      result['torch'][mode] = {
        'clip_pairs_per_s': tm,
        'peak_bytes': max((t['peak_bytes'] or 0) for t in rows) if rows else None,
        'ours_over_torch': (med / tm) if tm else None,
      }
  if _PROFILE_DIR.value:
    import profile_step  # pylint: disable=g-import-not-at-top

    logdir = os.path.join(_PROFILE_DIR.value, variant.replace('+', '_'))
    ours.profile(logdir, _PROFILE_STEPS.value)
    report = profile_step.summarize(
      logdir, top=_TOP.value, steps=_PROFILE_STEPS.value, hlo_text=ours.hlo_text
    )
    with open(os.path.join(logdir, 'top_ops.txt'), 'w') as f:
      f.write(profile_step.format_report(report) + '\n')
    result['profile'] = report
  ours = ref = None  # free both steps' buffers before the next variant
  return result


def _fmt(x, spec, none='n/a'):
  return format(x, spec) if x is not None else none


def _print_tables(results, devices) -> None:
  base = results[0]
  print(
    f'\nbackbone {_BACKBONE.value} {_FRAMES.value}x{_IMAGE.value}^2 batch {_BATCH.value} '
    f'classes {_CLASSES.value} prompt_len {_PROMPT_LEN.value} accum {_ACCUM.value} arch {_ARCH.value}, {len(devices)} x '
    f'{devices[0].device_kind}, {results[0]["params"] / 1e6:.1f}M params, '
    f'{base["step_tflops"]:.4g} TFLOP/step (analytic), peak {base["peak_source"]}'
  )
  print(f'GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES", "")!r}')
  print(
    f'{"variant":<16}{"pairs/s":>10}{"ratio":>8}{"step ms":>10}{"TFLOP/s":>10}{"MFU":>8}'
    f'{"XLA mem GiB":>13}{"mem ratio":>10}{"compile s":>11}{"loss":>9}'
  )
  for r in results:
    mem = r.get('xla_total_bytes')
    base_mem = base.get('xla_total_bytes')
    r['throughput_ratio'] = r['clip_pairs_per_s'] / base['clip_pairs_per_s']
    r['memory_ratio'] = (mem / base_mem) if mem and base_mem else None
    mfu = f'{100 * r["mfu"]:.1f}%' if r['mfu'] is not None else 'n/a'
    print(
      f'{r["variant"]:<16}{r["clip_pairs_per_s"]:>10.2f}{r["throughput_ratio"]:>8.2f}'
      f'{1e3 * r["step_s"]:>10.1f}{r["tflops_per_s"]:>10.3g}{mfu:>8}'
      f'{(mem or 0) / 2**30:>13.3f}{(r["memory_ratio"] or float("nan")):>10.2f}'
      f'{r["compile_s"]:>11.1f}{r["loss"]:>9.4f}'
    )
  if not _COMPARE.value and _REPEATS.value == 1:
    return
  print(
    f'\nevery timing, in the order run ({_STEPS.value} steps after {_WARMUP.value} warm-up each):'
  )
  print(
    f'{"variant":<16}{"impl":<16}{"repeat":>7}{"pairs/s":>10}{"step ms":>10}{"MFU":>8}'
    f'{"peak mem GiB":>14}'
  )
  for r in results:
    for t in r['timings']:
      if 'step_s' not in t:
        print(f'{r["variant"]:<16}{t["impl"]:<16}{t["repeat"]:>7}  failed: {t["error"]}')
        continue
      mfu = f'{100 * t["mfu"]:.1f}%' if t.get('mfu') is not None else 'n/a'
      peak = t.get('peak_bytes')
      print(
        f'{r["variant"]:<16}{t["impl"]:<16}{t["repeat"]:>7}{t["clip_pairs_per_s"]:>10.2f}'
        f'{1e3 * t["step_s"]:>10.1f}{mfu:>8}{_fmt(peak and peak / 2**30, ">14.2f", " " * 11 + "n/a")}'
      )
  if not _COMPARE.value:
    return
  print(
    f'\nours / torch (ratio of median clip pairs/s over {_REPEATS.value} repeat(s); same '
    'process, same shapes and dtype):'
  )
  head = f'{"variant":<16}{"ours":>10}'
  for mode in _TORCH_MODES.value:
    head += f'{"torch " + mode:>16}{"ours/" + mode:>16}{mode + " 1st s":>14}'
  print(head)
  for r in results:
    line = f'{r["variant"]:<16}{r["clip_pairs_per_s"]:>10.2f}'
    for mode in _TORCH_MODES.value:
      tm = r['torch'][mode]
      line += (
        f'{_fmt(tm["clip_pairs_per_s"], ">16.2f", " " * 13 + "n/a")}'
        f'{_fmt(tm["ours_over_torch"], ">16.3f", " " * 13 + "n/a")}'
        f'{_fmt(r["torch"]["first_step_s"].get(mode), ">14.1f", " " * 11 + "n/a")}'
      )
    print(line)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _REPEATS.value < 1 or _STEPS.value < 1 or _WARMUP.value < 0:
    raise app.UsageError('--repeats and --steps must be >= 1, --warmup >= 0')
  if not 2 <= _PROMPT_LEN.value <= 77:
    raise app.UsageError(f'--prompt_len must be in [2, 77], got {_PROMPT_LEN.value}')
  if _VOCAB.value is not None and _VOCAB.value < 3:
    raise app.UsageError(
      f'--vocab_size must be >= 3 (padding, a token, end-of-text), got {_VOCAB.value}'
    )
  if _COMPARE.value:
    bad = [m for m in _TORCH_MODES.value if m not in ('eager', 'compile')]
    if bad or not _TORCH_MODES.value:
      raise app.UsageError(f'--torch_modes: {bad or "empty"}; choose from eager, compile')
    # Both frameworks allocate on the same device: JAX must not take 75 % of it up front.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    try:
      import torch  # pylint: disable=g-import-not-at-top
      import transformers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise app.UsageError(f'--compare_torch needs torch and transformers: {e}') from e
    if torch.cuda.is_available():
      # XLA's default precision runs fp32 dots as TF32 on NVIDIA GPUs; let torch do the same.
      torch.backends.cuda.matmul.allow_tf32 = True
      torch.backends.cudnn.allow_tf32 = True
  devices = jax.devices()
  results = []
  for v in _VARIANTS.value:
    print(f'running {v} ...', file=sys.stderr, flush=True)
    results.append(run_variant(v, devices))
    if _JSON.value and len(results) < len(_VARIANTS.value):
      _write_json(results, devices, complete=False)  # kept if a later variant is cut short
  _print_tables(results, devices)
  if _PROFILE_DIR.value:
    import profile_step  # pylint: disable=g-import-not-at-top

    for r in results:
      print(f'\nprofile of {r["variant"]} ({_PROFILE_STEPS.value} steps):')
      print(profile_step.format_report(r['profile']))
  if _CHECK_XLA.value:
    _check_xla(results)
  if _JSON.value:
    _write_json(results, devices, complete=True)
    print(f'wrote {_JSON.value}')


def _write_json(results, devices, *, complete: bool) -> None:
  """--json_out: the variants run so far; meta.complete is False until the last one."""
  meta = {
    'backbone': _BACKBONE.value,
    'image_size': _IMAGE.value,
    'frames': _FRAMES.value,
    'batch': _BATCH.value,
    'accum': _ACCUM.value,
    'arch': _ARCH.value,
    'classes': _CLASSES.value,
    'devices': len(devices),
    'steps': _STEPS.value,
    'warmup': _WARMUP.value,
    'repeats': _REPEATS.value,
    'order': _ORDER.value,
    'device_kind': devices[0].device_kind,
    'platform': platform.platform(),
    'jax': jax.__version__,
    'date': time.strftime('%Y-%m-%d %H:%M:%S'),
    'variants': list(_VARIANTS.value),
    'complete': complete,
    'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
  }
  if _COMPARE.value:
    import torch_reference  # pylint: disable=g-import-not-at-top

    meta.update(torch_reference.environment(), torch_modes=list(_TORCH_MODES.value))
  os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
  tmp = f'{_JSON.value}.tmp'
  with open(tmp, 'w') as f:
    json.dump({'meta': meta, 'results': results}, f, indent=2)
  os.replace(tmp, _JSON.value)


def _check_xla(results) -> None:
  """Analytic forward FLOPs of one foggy clip and one prompt against XLA's cost analysis."""
  from fognet_jax.tools import model_cost  # pylint: disable=g-import-not-at-top

  cfg = _config(results[0]['variant'])
  m = model_cost.measure(
    cfg.model, frames=_FRAMES.value, image_size=_IMAGE.value, num_classes=_CLASSES.value
  )
  f = results[0]['flops']
  vis = f['image_forward_flops_per_frame'] * _FRAMES.value / 1e9
  txt = f['text_forward_flops_per_prompt'] / 1e9
  print(
    '\nanalytic forward GFLOPs against XLA cost analysis (XLA also counts element-wise '
    'ops; model_cost rounds to 1 MFLOP):'
  )
  print(
    f'  image tower, 1 clip of {_FRAMES.value} frames: analytic {vis:.4g}, XLA inference '
    f'(with heads) {m["gflops_inference"]:.4g}, ratio {vis / m["gflops_inference"]:.3f}'
  )
  print(
    f'  text tower, 1 prompt: analytic {txt:.4g}, XLA {m["gflops_text_per_prompt"]:.4g}, '
    f'ratio {txt / m["gflops_text_per_prompt"]:.3f}'
  )
  results[0]['xla_check'] = {
    'analytic_gflops_clip': vis,
    'xla_gflops_inference': m['gflops_inference'],
    'analytic_gflops_prompt': txt,
    'xla_gflops_prompt': m['gflops_text_per_prompt'],
  }


if __name__ == '__main__':
  app.run(main)
