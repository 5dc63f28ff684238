r"""Does the train step fit a TPU? Compiles the real step for a TPU topology, on this machine.

  python -m fognet_jax.tools.tpu_fit --config=configs/fogact.py --topology=v5e-1 \
      --batch=16,32,48 [--remat] [--accum=4] [--search [--search_unit=8]] [--libtpu=PATH]
  python -m fognet_jax.tools.tpu_fit --config=configs/fogact.py:fsdp --topology=v2:2x2 \
      --batch=64 --config.model.dtype=bfloat16

No TPU is needed: libtpu's compile-only client (`jax.experimental.topologies`) gives the TPU
devices of a topology, and XLA:TPU compiles for them here. What is compiled is the project's
own step: `train.make_train_step` with the shardings of `sharding.state_shardings` (the
config's `mesh.fsdp`), over a mesh of the topology's devices, on an abstract train state
(`nnx.eval_shape`: no weights are read or allocated; the architecture is `model.backbone` +
`model.clip_overrides`, or the `clip_config.json` of a local `model.init_from` directory) and
an abstract batch of the config's frames (uint8 with colour chains when
`perf.pixels_on_device`), `--classes` class prompts of `--prompt_len` tokens (FogAct: 55).

One row per global batch: the compiler's verdict (or its error, on one line), the bytes per
device from `compiled.memory_analysis()` (arguments, outputs not aliased to a donated
argument, temporaries, and their total with the generated code) against the device's HBM
(`tpu_topology.HBM_GIB`), the FLOPs of one step over all devices (`cost_analysis()`,
multiply-add = 2; with accumulation, the micro-batch loop's body times its trip count) and the
compile time.
A row fits when it compiles and its total is within the HBM. Then the largest batch that
fits; with --search, found by doubling from the largest batch given that fits, then
bisecting, in steps of --search_unit (default: devices x accumulation steps).

Topologies: libtpu's names ('v5e:1x1', 'v2:2x2', 'v4:2x2x1', ...) or Cloud's slice names
(`tpu_topology.TOPOLOGIES`: 'v5e-1', 'v2-8', 'v4-8', ...). v4 and v5p are compiled as JAX sees
them on a TPU VM: one device per chip (megacore); v2 and v3 show one device per TensorCore.

libtpu (the compiler) is not a dependency of the package: `--libtpu=PATH` (its libtpu.so),
else `TPU_LIBRARY_PATH`, else an installed `libtpu` package, else `make venv`'s copy in
`<venv>/libtpu` (installed there, not in site-packages, so that JAX on a CPU machine does not
try to start a TPU with it). The version jax pins (`jax[tpu]`):
`tpu_topology.LIBTPU_VERSION`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Optional
from typing import Sequence

import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from flax import nnx
from ml_collections import config_flags

from fognet_jax import config_lib
from fognet_jax import losses
from fognet_jax import main as main_lib
from fognet_jax import optim
from fognet_jax import pixels
from fognet_jax import prompts
from fognet_jax import sharding as sharding_lib
from fognet_jax import train
from fognet_jax import weights
from fognet_jax.models import clip
from fognet_jax.tools import tpu_topology

# ------------------------------------------------------------------------------ the step


def step_config(config, *, batch: int, accum: Optional[int] = None, remat: Optional[bool] = None):
  """A copy of `config` with the global batch, the accumulation and remat set."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.train.batch_size = int(batch)
    if accum is not None:
      cfg.train.grad_accum_steps = int(accum)
    if remat is not None:
      cfg.model.remat = bool(remat)
  return cfg


def _clip_config(model_cfg):
  """The CLIP architecture without reading weights: a local `init_from` directory's
  clip_config.json, else `model.backbone` + `model.clip_overrides`."""
  init = model_cfg.get('init_from')
  meta = os.path.join(str(init), 'clip_config.json') if init else None
  if meta and os.path.isfile(meta):
    with open(meta) as f:
      return clip.CLIPConfig(**json.load(f)['config'])
  return weights.clip_config(model_cfg)


def build_step(config, devices: Sequence, *, num_classes: int = 55, prompt_len: int = 77):
  """(jitted train step, abstract (state, batch, prompt tokens)) of `config` on a 1-D mesh of
  `devices`: `train.make_train_step` as `train.train` builds it, with shape-only arguments
  that carry their shardings."""

  mesh = sharding_lib.make_mesh(-1, devices=devices)
  config_lib.validate_model(config.model)
  config_lib.validate_loss(config.loss)
  config_lib.validate_train(config.train, num_devices=mesh.size, num_processes=1)
  config_lib.validate_perf(config.perf, dtype=config.model.dtype)
  m = config.model
  dtype = clip.canonical_dtype(m.dtype)
  clip_cfg = _clip_config(m)

  def create():
    rngs = nnx.Rngs(config.seed)
    towers = clip.CLIP(
      clip_cfg,
      dtype=dtype,
      remat=bool(m.remat),
      attention_impl=config.perf.attention_impl,
      residual_dtype=config.perf.residual_dtype,
      rngs=rngs,
    )
    return weights.fognet_model(m, towers, rngs=rngs, attention_impl=config.perf.attention_impl)

  model = nnx.eval_shape(create)
  graphdef, params, rest = train.split_model(model)
  schedule = optim.make_schedule(config.train, 1000, 100)
  tx = optim.make_optimizer(config.train, params, schedule)
  state = train.TrainState(
    step=jax.ShapeDtypeStruct((), jnp.int32),
    params=params,
    rest=rest,
    opt_state=jax.eval_shape(tx.init, params),
  )
  shardings = sharding_lib.state_shardings(
    state, mesh, fsdp=config.mesh.fsdp, min_size=config.perf.fsdp_min_size
  )
  step = train.make_train_step(
    graphdef,
    tx,
    mesh=mesh,
    state_shardings=shardings,
    loss_fn=losses.make_loss_fn(config),
    schedule=schedule,
    seed=config.seed,
    grad_accum_steps=config.train.grad_accum_steps,
    freeze_text=config.train.freeze_text,
    prompt_sampler=main_lib.prompt_sampler(config),
  )

  def shaped(tree, sharding_tree):
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding_tree
    )

  b, d = config.train.batch_size, config.data
  frames = (b, d.num_frames, d.image_size, d.image_size, 3)
  uint8 = bool(config.perf.pixels_on_device)
  split = sharding_lib.batch_sharding(mesh)
  batch = {
    'clean': jax.ShapeDtypeStruct(frames, jnp.uint8 if uint8 else jnp.float32, sharding=split),
    'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=split),
  }
  batch['foggy'] = batch['clean']
  if uint8:
    batch['color'] = jax.ShapeDtypeStruct(
      (b, pixels.COLOR_STEPS, 3, 4), jnp.float32, sharding=split
    )
  k = config.train.num_templates if config.train.num_templates > 0 else len(prompts.TEMPLATES)
  tokens = jax.ShapeDtypeStruct(
    (k, num_classes, min(prompt_len, clip_cfg.context_length)),
    jnp.int32,
    sharding=sharding_lib.replicated(mesh),
  )
  return step, (shaped(state, shardings), batch, tokens)


@dataclasses.dataclass
class Fit:
  """What the compiler says about one setting (bytes per device)."""

  batch: int
  accum: int
  remat: bool
  fsdp: bool
  error: Optional[str] = None
  argument: int = 0
  output: int = 0
  alias: int = 0
  temp: int = 0
  code: int = 0
  flops: float = 0.0  # one step, all devices
  compile_s: float = 0.0
  hbm: Optional[int] = None

  @property
  def total(self) -> int:
    return self.argument + self.output - self.alias + self.temp + self.code

  @property
  def fits(self) -> bool:
    return self.error is None and (self.hbm is None or self.total <= self.hbm)


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def compile_fit(
  config,
  devices: Sequence,
  *,
  batch: int,
  accum: Optional[int] = None,
  remat: Optional[bool] = None,
  num_classes: int = 55,
  prompt_len: int = 77,
) -> Fit:
  """Compiles the step of `config` at global `batch` for `devices`; the compiler's verdict."""
  cfg = step_config(config, batch=batch, accum=accum, remat=remat)
  fit = Fit(
    batch=int(batch),
    accum=int(cfg.train.grad_accum_steps),
    remat=bool(cfg.model.remat),
    fsdp=bool(cfg.mesh.fsdp),
    hbm=tpu_topology.hbm_bytes(devices[0].device_kind),
  )
  step, args = build_step(cfg, devices, num_classes=num_classes, prompt_len=prompt_len)
  start = time.perf_counter()
  try:
    compiled = step.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    fit.error = tpu_topology.one_line(e)
    fit.compile_s = time.perf_counter() - start
    return fit
  fit.compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  fit.argument = int(mem.argument_size_in_bytes)
  fit.output = int(mem.output_size_in_bytes)
  fit.alias = int(mem.alias_size_in_bytes)
  fit.temp = int(mem.temp_size_in_bytes)
  fit.code = int(mem.generated_code_size_in_bytes)
  # XLA's cost analysis counts a loop's body once: the accumulation's micro-batch loop runs
  # `accum` times (the optimizer update outside it, counted `accum` times too, is < 0.1 %).
  fit.flops = _flops(compiled) * len(devices) * fit.accum
  return fit


def search(
  try_batch, unit: int, start: Optional[int] = None, limit: int = 1 << 16, known: Sequence[Fit] = ()
) -> list[Fit]:
  """Largest multiple of `unit` that fits: doubling from `start` (default `unit`) to the first
  batch that does not fit, then bisection. `try_batch(b) -> Fit`; a batch in `known` (Fits
  already compiled) is not compiled again. Returns every Fit it compiled."""
  tried: list[Fit] = []
  seen = {f.batch: f.fits for f in known}

  def attempt(b):
    if b not in seen:
      fit = try_batch(b)
      tried.append(fit)
      seen[b] = fit.fits
    return seen[b]

  b = max(unit, (start or unit) // unit * unit)
  lo, hi = 0, None
  while b <= limit:
    if attempt(b):
      lo, b = b, b * 2
    else:
      hi = b
      break
  if hi is None:
    return tried
  while hi - lo > unit:
    mid = (lo + hi) // 2 // unit * unit
    if mid <= lo:
      break
    if attempt(mid):
      lo = mid
    else:
      hi = mid
  return tried


def largest_fit(fits: Sequence[Fit]) -> Optional[int]:
  ok = [f.batch for f in fits if f.fits]
  return max(ok) if ok else None


def format_header() -> str:
  return (
    f'{"batch":>6} {"accum":>5} {"remat":>5} {"fsdp":>4}  {"args GB":>8} {"out GB":>7} '
    f'{"temp GB":>8} {"total GB":>8} {"HBM GB":>7}  {"fits":>4} {"TFLOP/step":>10} '
    f'{"compile s":>9}  compiler'
  )


def format_row(fit: Fit) -> str:
  gb = lambda n: f'{n / 1e9:.2f}'
  hbm = gb(fit.hbm) if fit.hbm else '?'
  head = (
    f'{fit.batch:>6} {fit.accum:>5} {"yes" if fit.remat else "no":>5} '
    f'{"yes" if fit.fsdp else "no":>4}  '
  )
  if fit.error is not None:
    return (
      head + f'{"-":>8} {"-":>7} {"-":>8} {"-":>8} {hbm:>7}  {"no":>4} {"-":>10} '
      f'{fit.compile_s:>9.1f}  error: {fit.error}'
    )
  return (
    head + f'{gb(fit.argument):>8} {gb(fit.output - fit.alias):>7} {gb(fit.temp):>8} '
    f'{gb(fit.total):>8} {hbm:>7}  {"yes" if fit.fits else "no":>4} '
    f'{fit.flops / 1e12:>10.1f} {fit.compile_s:>9.1f}  compiled'
  )


_COLLECTIVE = re.compile(
  r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(all-reduce|all-gather|'
  r'reduce-scatter|all-to-all|collective-permute)(?:-start)?\('
)
_ARRAY = re.compile(r'\b([a-z]+[0-9]*)\[([0-9,]*)\]')


def collectives(hlo_text: str) -> list[tuple[str, list[tuple[int, ...]]]]:
  """(kind, shapes of its result) of every cross-device collective in a compiled program's
  text (`compiled.as_text()`): all-reduce, all-gather, reduce-scatter, all-to-all,
  collective-permute (their async `-start` forms included)."""
  found = []
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.match(line)
    if m:
      shapes = [
        tuple(int(d) for d in dims.split(',') if d) for _, dims in _ARRAY.findall(m.group(1))
      ]
      found.append((m.group(2), shapes))
  return found


# ------------------------------------------------------------------------------ the program


def _define_flags():
  config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally `file.py:variant`.', lock_config=True
  )
  flags.DEFINE_string(
    'topology',
    'v5e:1x1',
    'TPU topology: a libtpu name (v5e:1x1, v2:2x2, '
    'v4:2x2x1) or a slice name (' + ', '.join(tpu_topology.TOPOLOGIES) + ').',
  )
  flags.DEFINE_list('batch', [], 'Global batches to compile (default: train.batch_size).')
  flags.DEFINE_bool('remat', None, "Set model.remat (default: the config's).")
  flags.DEFINE_integer('accum', None, "Set train.grad_accum_steps (default: the config's).")
  flags.DEFINE_bool('search', False, 'Also search the largest global batch that fits.')
  flags.DEFINE_integer(
    'search_unit',
    None,
    "The search's step: it finds the largest multiple "
    'of this that fits (default: devices x accumulation steps).',
  )
  flags.DEFINE_string(
    'libtpu',
    None,
    'Path of libtpu.so (default: TPU_LIBRARY_PATH, the libtpu package, or <venv>/libtpu).',
  )
  flags.DEFINE_integer('classes', 55, 'Classes: text prompts encoded per step (FogAct: 55).')
  flags.DEFINE_integer('prompt_len', 77, 'Tokens per prompt (77 untrimmed, the most).')
  flags.DEFINE_string('json_out', None, 'Also write the rows (exact bytes) as JSON here.')
  flags.mark_flags_as_required(['config'])


def main(argv) -> int:
  fv = flags.FLAGS
  if len(argv) > 1:
    raise tpu_topology.ToolError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    batches = [int(b) for b in fv.batch]
  except ValueError as e:
    raise tpu_topology.ToolError(f'--batch={",".join(fv.batch)}: not a list of integers') from e
  if any(b < 1 for b in batches):
    raise tpu_topology.ToolError(f'--batch={",".join(fv.batch)}: batches must be positive')
  if fv.accum is not None and fv.accum < 1:
    raise tpu_topology.ToolError(f'--accum={fv.accum}: must be >= 1')
  libtpu = tpu_topology.find_libtpu(fv.libtpu)
  devices = tpu_topology.topology_devices(fv.topology, libtpu)
  config = fv.config
  unit = len(devices) * (fv.accum or config.train.grad_accum_steps)
  if fv.search_unit is not None and (fv.search_unit < 1 or fv.search_unit % unit):
    raise tpu_topology.ToolError(
      f'--search_unit={fv.search_unit}: must be a positive multiple of devices '
      f'x accumulation steps ({unit})'
    )
  kind = devices[0].device_kind
  hbm = tpu_topology.hbm_bytes(kind)
  print(
    f'topology {tpu_topology.topology_name(fv.topology)}: {len(devices)} x {kind}, '
    f'{"?" if hbm is None else f"{hbm / tpu_topology.GIB:g} GiB"} HBM per device; libtpu '
    f'{tpu_topology.libtpu_version(libtpu)}; config {fv["config"].config_filename}: '
    f'{config.model.backbone} {config.model.dtype} {config.data.num_frames}x'
    f'{config.data.image_size}^2; bytes per device',
    flush=True,
  )
  print(format_header(), flush=True)

  def try_batch(b: int) -> Fit:
    try:
      fit = compile_fit(
        config,
        devices,
        batch=b,
        accum=fv.accum,
        remat=fv.remat,
        num_classes=fv.classes,
        prompt_len=fv.prompt_len,
      )
    except ValueError as e:  # a batch the config refuses (not divisible, ...)
      raise tpu_topology.ToolError(tpu_topology.one_line(e)) from e
    print(format_row(fit), flush=True)
    return fit

  fits = [try_batch(b) for b in (batches or [config.train.batch_size])]
  if fv.search:
    unit = fv.search_unit or unit
    start = largest_fit(fits) or unit
    fits += search(try_batch, unit, start=start, known=fits)
  best = largest_fit(fits)
  if fv.json_out:
    with open(fv.json_out, 'w') as f:
      json.dump(
        {
          'topology': tpu_topology.topology_name(fv.topology),
          'devices': len(devices),
          'device_kind': kind,
          'libtpu': tpu_topology.libtpu_version(libtpu),
          'config': fv['config'].config_filename,
          'largest_fit': best,
          'rows': [dict(dataclasses.asdict(x), total=x.total, fits=x.fits) for x in fits],
        },
        f,
        indent=1,
      )
  print(
    f'largest global batch that fits: {best if best else "none of those tried"}'
    + ('' if fv.search else ' (of those tried; --search looks further)'),
    flush=True,
  )
  return 0


def _run():

  def guarded(argv):
    try:
      return main(argv)
    except (tpu_topology.ToolError,) + main_lib.USER_ERRORS as e:
      main_lib.print_error(e)
      return 1

  _define_flags()
  app.run(guarded, flags_parser=main_lib.parse_flags)


if __name__ == '__main__':
  # The compile-only client needs no TPU: JAX itself stays on the CPU (no TPU start-up, also
  # where libtpu is importable), unless JAX_PLATFORMS says otherwise.
  if not os.environ.get('JAX_PLATFORMS'):
    jax.config.update('jax_platforms', 'cpu')
  _run()
