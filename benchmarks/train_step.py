r"""Train-step throughput (clip pairs/s) and memory of FogNet, comparing dtype and remat.

Builds the real model (random initialisation; no weights needed), the real loss and the
sharded jitted train step of `fognet_jax.train`, feeds random paired clips and measures
steady-state steps/s over all devices. Each variant (fp32 / bf16, remat off / on) is measured
in the same process, and the table gives throughput and memory as ratios to the first one.

Memory: XLA's compiled memory analysis (arguments + outputs + temporaries - aliased, per
device) for every backend; on GPUs/TPUs also the device allocator's peak bytes in use after
the variant ran (monotonic within the process, so it is reported as "peak so far").

  # CPU, tiny (seconds):
  python benchmarks/train_step.py --backbone=tiny --image_size=32 --frames=2 --batch=4 \
      --steps=3 --variants=fp32,bf16,fp32+remat --json_out=/tmp/train_step.json
  # GPU, paper scale:
  python benchmarks/train_step.py --backbone=ViT-B/16 --image_size=224 --frames=8 --batch=16 \
      --variants=bf16,bf16+remat,fp32 --json_out=benchmarks/train_step_h200.json
"""
import json
import os
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_BACKBONE = flags.DEFINE_string('backbone', 'tiny', 'CLIP backbone name (clip.CONFIGS key).')
_IMAGE = flags.DEFINE_integer('image_size', 32, 'Frame resolution.')
_FRAMES = flags.DEFINE_integer('frames', 2, 'Frames per clip.')
_BATCH = flags.DEFINE_integer('batch', 4, 'Global batch (clip pairs per step).')
_CLASSES = flags.DEFINE_integer('classes', 55, 'Number of classes (text prompts per step).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per variant.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
_VARIANTS = flags.DEFINE_list('variants', ['fp32', 'bf16', 'fp32+remat', 'bf16+remat'],
                              'Variants: dtype (fp32|bf16) with optional +remat, +fsdp.')
_ARCH = flags.DEFINE_enum('arch', 'fognet', ['fognet', 'actionclip'], 'Model architecture.')
_ACCUM = flags.DEFINE_integer('accum', 1, 'Gradient accumulation micro-batches.')
_FREEZE_TEXT = flags.DEFINE_bool('freeze_text', False, 'Freeze the text tower.')
_JSON = flags.DEFINE_string('json_out', None, 'Write the results as JSON here.')


def _config(variant: str):
  from fognet_jax import config_lib  # pylint: disable=g-import-not-at-top
  parts = variant.split('+')
  cfg = config_lib.base_config()
  cfg.model.backbone = _BACKBONE.value
  cfg.model.init_from = None
  cfg.model.arch = _ARCH.value
  cfg.model.dtype = {'fp32': 'float32', 'bf16': 'bfloat16'}[parts[0]]
  cfg.model.remat = 'remat' in parts
  cfg.mesh.fsdp = 'fsdp' in parts
  cfg.model.clip_overrides.image_size = _IMAGE.value
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
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
             m.alias_size_in_bytes)
    return {'xla_total_bytes': int(total), 'xla_temp_bytes': int(m.temp_size_in_bytes),
            'xla_argument_bytes': int(m.argument_size_in_bytes)}
  except Exception:  # pylint: disable=broad-except
    return {}


def _device_peak() -> int | None:
  try:
    stats = jax.local_devices()[0].memory_stats()
    return int(stats.get('peak_bytes_in_use')) if stats else None
  except Exception:  # pylint: disable=broad-except
    return None


def run_variant(variant: str) -> dict:
  from fognet_jax import losses, sharding, train  # pylint: disable=g-import-not-at-top
  from fognet_jax.models import fognet  # pylint: disable=g-import-not-at-top
  cfg = _config(variant)
  mesh = sharding.make_mesh(-1)
  from fognet_jax import config_lib  # pylint: disable=g-import-not-at-top
  config_lib.validate(cfg, num_devices=mesh.size)
  model = fognet.create_model(cfg.model, rngs=nnx.Rngs(0))
  schedule = train.make_schedule(cfg.train, 1000, 0)
  graphdef, state, shardings, tx = train.build_state(cfg, mesh, model, schedule)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  del model
  loss_fn = lambda out, y: losses.fognet_loss(out, y, cfg.loss, cfg.model)
  step = train.make_train_step(graphdef, tx, mesh=mesh, state_shardings=shardings,
                               loss_fn=loss_fn, schedule=schedule, seed=0,
                               grad_accum_steps=cfg.train.grad_accum_steps,
                               freeze_text=cfg.train.freeze_text)
  rng = np.random.default_rng(0)
  b, t, s = _BATCH.value, _FRAMES.value, _IMAGE.value
  ctx = 77
  tokens = rng.integers(1, 400, size=(16, _CLASSES.value, ctx)).astype(np.int32)
  tokens[..., -1] = 49407  # EOT, the text tower pools at the largest id
  tokens = jax.device_put(jnp.asarray(tokens), sharding.replicated(mesh))
  batch = {'clean': rng.normal(size=(b, t, s, s, 3)).astype(np.float32),
           'foggy': rng.normal(size=(b, t, s, s, 3)).astype(np.float32),
           'label': (np.arange(b) % _CLASSES.value).astype(np.int32)}
  batch = sharding.put_global_batch(batch, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, tokens).compile()
  compile_s = time.perf_counter() - t0
  mem = _memory(compiled)
  for _ in range(_WARMUP.value):
    state, metrics = step(state, batch, tokens)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = step(state, batch, tokens)
  jax.block_until_ready((state, metrics))
  dt = (time.perf_counter() - t0) / _STEPS.value
  loss = float(metrics['loss'])
  return {'variant': variant, 'params': n_params, 'compile_s': compile_s,
          'step_s': dt, 'clip_pairs_per_s': b / dt, 'loss': loss,
          'device_peak_bytes_so_far': _device_peak(), **mem}


def main(argv):
  del argv
  devices = jax.devices()
  results = []
  for v in _VARIANTS.value:
    print(f'running {v} ...', file=sys.stderr, flush=True)
    results.append(run_variant(v))
  base = results[0]
  header = (f'{"variant":<16}{"pairs/s":>10}{"ratio":>8}{"step ms":>10}{"XLA mem GiB":>13}'
            f'{"mem ratio":>10}{"compile s":>11}{"loss":>9}')
  print(f'\nbackbone {_BACKBONE.value} {_FRAMES.value}x{_IMAGE.value}^2 batch {_BATCH.value} '
        f'accum {_ACCUM.value} arch {_ARCH.value}, {len(devices)} x {devices[0].device_kind}, '
        f'{results[0]["params"] / 1e6:.1f}M params')
  print(header)
  for r in results:
    mem = r.get('xla_total_bytes')
    base_mem = base.get('xla_total_bytes')
    r['throughput_ratio'] = r['clip_pairs_per_s'] / base['clip_pairs_per_s']
    r['memory_ratio'] = (mem / base_mem) if mem and base_mem else None
    print(f'{r["variant"]:<16}{r["clip_pairs_per_s"]:>10.2f}{r["throughput_ratio"]:>8.2f}'
          f'{1e3 * r["step_s"]:>10.1f}'
          f'{(mem or 0) / 2 ** 30:>13.3f}{(r["memory_ratio"] or float("nan")):>10.2f}'
          f'{r["compile_s"]:>11.1f}{r["loss"]:>9.4f}')
  if _JSON.value:
    meta = {'backbone': _BACKBONE.value, 'image_size': _IMAGE.value, 'frames': _FRAMES.value,
            'batch': _BATCH.value, 'accum': _ACCUM.value, 'arch': _ARCH.value,
            'classes': _CLASSES.value, 'devices': len(devices),
            'device_kind': devices[0].device_kind, 'platform': platform.platform(),
            'jax': jax.__version__, 'date': time.strftime('%Y-%m-%d %H:%M:%S')}
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, 'w') as f:
      json.dump({'meta': meta, 'results': results}, f, indent=2)
    print(f'wrote {_JSON.value}')


if __name__ == '__main__':
  app.run(main)
