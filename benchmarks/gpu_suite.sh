#!/usr/bin/env bash
# The GPU measurements of the train step in one call (under 8 minutes on one H100):
#
#   benchmarks/gpu_suite.sh OUTDIR           # paper scale: ViT-B/16, 8x224^2, bf16
#   benchmarks/gpu_suite.sh OUTDIR --tiny    # the same logic at tiny shapes (CPU, ~2-3 minutes)
#   (SUITE_TINY=1 is the same as --tiny.)
#
# Parts, in priority order, each under its own `timeout` (a failure or a hang costs only that
# part) and all inside SUITE_BUDGET_S (default 460 s; a part that would get under 30 s is
# skipped). Logs are tee'd to OUTDIR/<part>.log; OUTDIR/status.tsv says how each part ended
# and OUTDIR/summary.md gathers the figures.
#   1 fognet_b16     FogNet bf16 B=16, 55 classes: ours against torch eager and torch.compile,
#                    alternating, 2 repeats; jax.profiler trace of 3 steps, top 20 ops by self
#                    time -> OUTDIR/profile_b16_top20.txt (traces in OUTDIR/traces/)
#   2 e2e            python -m fognet_jax.main, configs/synthetic_224.py (real input pipeline,
#                    synthetic_fog_act/bench224, 8x224^2, B=16, 60 steps) -> e2e_metrics.jsonl
#   2a pipeline      the input pipeline alone on this host's cores (benchmarks/input_pipeline.py
#                    on bench224, 8x224^2, pixels on the device, 8 and 16 thread workers and
#                    process workers): training pairs/s the host can feed, to read the e2e
#                    figure against, and which config.perf.worker_type feeds more here
#   2b cudnn_b16     FogNet bf16 B=16 with XLA attention, with cuDNN fused attention (tokens
#                    padded to a multiple of 64 and masked), and with cuDNN and a bfloat16
#                    residual stream (perf.residual_dtype), same process (--tiny: fp32,
#                    fp32+remat and bf16+res16, to run the same plumbing)
#   3 fognet_b32     FogNet bf16 B=32: torch first, then ours (both do not fit at once on 80 GB)
#   4 actionclip_b16 ActionCLIP bf16 B=16: ours against torch eager
#   5 e2e_step       the step alone at the e2e shapes (14 classes), for the e2e comparison
#
# What the GPU host needs (its image has jax, flax, optax, orbax, einops, torch, transformers
# but not ml_collections nor tensorflow-datasets; it reaches no package index). On the machine
# where you edit, once:
#   benchmarks/gpu_wheels.sh        # -> .whl/ (wheels, ~10 MB) and .gpu_data/tfds (bench224
#                                   #    prepared: ArrayRecord copy only, ~11 MB); both
#                                   #    git-ignored through .git/info/exclude
# then run this with .whl and .gpu_data carried to the host, e.g. through the device tool:
#   carry: [".whl", ".gpu_data"]
#   command: benchmarks/gpu_suite.sh /tmp/suite; tar czf $OUT/suite.tgz -C /tmp --exclude=traces suite
# The suite installs the wheels itself (pip --no-index --target /tmp/fognet_site) when
# ml_collections cannot be imported.
#
# The end-to-end part runs without TensorFlow (not on the GPU image, too large to carry) on the
# prepared bench224 in .gpu_data: without it the Video feature is the Sequence of JPEG Images
# it stands for, records are parsed with TFDS's own Example protobuf, and MetricWriter writes
# metrics.jsonl only (tests/test_without_tensorflow.py). A pre-check still tries all three
# and skips part 2 with the reason in e2e.log if one fails; the other parts still run.
#
# Environment: PYTHON (default python3; .venv/bin/python when it exists and --tiny),
# SUITE_BUDGET_S, E2E_DATA_DIR (default .gpu_data/tfds if present, else OUTDIR/tfds, built on
# first use, which needs TensorFlow), TORCH_MODES (default eager,compile; eager with --tiny).
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--tiny]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
OUTDIR=$1; shift
TINY=${SUITE_TINY:-0}
for a in "$@"; do
  case $a in --tiny) TINY=1 ;; *) usage ;; esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/fognet_jax_cache}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/fognet_inductor_cache}
if [[ -z ${PYTHON:-} ]]; then
  if [[ $TINY == 1 && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ $TINY == 1 ]]; then BUDGET=${SUITE_BUDGET_S:-600}; else BUDGET=${SUITE_BUDGET_S:-460}; fi
START=$SECONDS
STATUS=$OUTDIR/status.tsv
printf 'part\tstatus\tseconds\ttimeout_s\n' > "$STATUS"

# Missing packages from the carried wheels.
if ! "$PYTHON" -c 'import ml_collections' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing .whl/*.whl into /tmp/fognet_site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fognet_site .whl/*.whl || { echo "wheel install failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/fognet_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "ml_collections is missing and there is no .whl/: run benchmarks/gpu_wheels.sh first" >&2
    exit 1
  fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

if [[ $TINY == 1 ]]; then
  SHAPES=(--backbone=tiny --image_size=32 --frames=2)
  DTYPE=fp32; B16=4; B32=8; STEPS=2; WARMUP=1
  TORCH_MODES=${TORCH_MODES:-eager}
  E2E_OVERRIDES=(--config.model.backbone=tiny --config.model.clip_overrides.image_size=32
                 --config.data.image_size=32 --config.data.num_frames=2
                 --config.model.dtype=float32 --config.train.batch_size=$B16
                 --config.train.num_train_steps=8 --config.train.log_every_steps=2
                 --config.perf.num_workers=2)
  E2E_BATCH=$B16
else
  SHAPES=(--backbone=ViT-B/16 --image_size=224 --frames=8)
  DTYPE=bf16; B16=16; B32=32; STEPS=10; WARMUP=2
  TORCH_MODES=${TORCH_MODES:-eager,compile}
  E2E_OVERRIDES=()
  E2E_BATCH=16
fi
if [[ -z ${E2E_DATA_DIR:-} ]]; then
  if [[ -d .gpu_data/tfds ]]; then E2E_DATA_DIR=$ROOT/.gpu_data/tfds; else E2E_DATA_DIR=$OUTDIR/tfds; fi
fi

# run_part NAME TIMEOUT_S COMMAND...: tees to OUTDIR/NAME.log, records the outcome.
run_part() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - (SECONDS - START) ))
  (( limit > left )) && limit=$left
  if (( limit < 30 )); then
    echo "== $name: skipped, ${left}s of the suite's budget left" | tee "$OUTDIR/$name.log"
    printf '%s\tskipped (budget)\t0\t%s\n' "$name" "$limit" >> "$STATUS"
    return
  fi
  echo "== $name (timeout ${limit}s): $*" | tee "$OUTDIR/$name.log"
  local t0=$SECONDS
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$OUTDIR/$name.log"
  local rc=${PIPESTATUS[0]} st
  case $rc in 0) st=ok ;; 124|137) st="timed out" ;; *) st="failed (rc $rc)" ;; esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$st" "$((SECONDS - t0))" "$limit" >> "$STATUS"
  echo "== $name: $st after $((SECONDS - t0))s"
}

skip_part() {  # skip_part NAME REASON
  echo "== $1: skipped: $2" | tee "$OUTDIR/$1.log"
  printf '%s\tskipped: %s\t0\t0\n' "$1" "$2" >> "$STATUS"
}

# 0: the machine and the software, for the record.
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null \
    || echo "no nvidia-smi"
  nproc
  "$PYTHON" - <<'PY'
import importlib
for m in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'transformers', 'tensorflow_datasets'):
  try:
    print(m, importlib.import_module(m).__version__)
  except Exception as e:  # pylint: disable=broad-except
    print(m, 'unavailable:', type(e).__name__, e)
import jax
print('jax devices', jax.devices())
PY
} > "$OUTDIR/env.txt" 2>&1
cat "$OUTDIR/env.txt"

TS=(benchmarks/train_step.py "${SHAPES[@]}" --classes=55 --variants=$DTYPE --steps=$STEPS --warmup=$WARMUP)

# 1: FogNet B=16 against torch, with the profile.
if (( TINY == 1 )); then L1=200; else L1=170; fi
run_part fognet_b16 $L1 "$PYTHON" "${TS[@]}" --batch=$B16 --compare_torch \
    --torch_modes="$TORCH_MODES" --repeats=2 --profile_dir="$OUTDIR/traces/fognet_b16" \
    --profile_steps=3 --json_out="$OUTDIR/fognet_b16.json"
top=$(find "$OUTDIR/traces/fognet_b16" -name top_ops.txt 2>/dev/null | head -1)
[[ -n $top ]] && cp "$top" "$OUTDIR/profile_b16_top20.txt"

# 2: end to end with the real input pipeline.
E2E_WORKDIR=/tmp/fognet_suite_e2e_$$
E2E_CHECK=$("$PYTHON" - "$E2E_DATA_DIR" 2>&1 <<'PY'
"""Can fognet_jax.main train on bench224 here? Prints 'ok' last, or the reason it cannot."""
import sys
import tempfile
try:
  import tensorflow_datasets as tfds
  import tfds_fogact  # noqa: F401  (registers the builders)
  b = tfds.builder('synthetic_fog_act/bench224', data_dir=sys.argv[1])
except Exception as e:  # pylint: disable=broad-except
  print(f'the dataset builder cannot be constructed here ({type(e).__name__}: {e}); without '
        'TensorFlow, tfds_fogact/common.py must not use tfds.features.Video')
  sys.exit(1)
if not b.is_prepared():
  try:
    import tensorflow  # noqa: F401  (building writes TFRecords through tf.data)
  except ImportError:
    print(f'bench224 is not prepared in {sys.argv[1]} and TensorFlow is missing to build it '
          '(run benchmarks/gpu_wheels.sh and carry .gpu_data)')
    sys.exit(1)
  print('ok')
  sys.exit(0)
try:
  from fognet_jax import config_lib, input_pipeline
  cfg = config_lib.load_config('fogact').data
  cfg.dataset, cfg.data_dir, cfg.image_size, cfg.num_frames = (
      'synthetic_fog_act/bench224', sys.argv[1], 32, 2)
  next(input_pipeline.train_iterator(cfg, batch_size=1, seed=0, process_index=0,
                                     process_count=1))
except Exception as e:  # pylint: disable=broad-except
  print(f'the input pipeline cannot read bench224 here ({type(e).__name__}: {e}); without '
        'TensorFlow, records must be parsed without tf.train.Example')
  sys.exit(1)
try:
  from fognet_jax import metrics
  metrics.MetricWriter(tempfile.mkdtemp()).close()
except Exception as e:  # pylint: disable=broad-except
  print(f'fognet_jax.metrics.MetricWriter fails here ({type(e).__name__}: {e}); without '
        'TensorFlow it must not need flax.metrics.tensorboard')
  sys.exit(1)
print('ok')
PY
)
E2E_RC=$?
if [[ $E2E_RC -ne 0 || ${E2E_CHECK##*$'\n'} != ok ]]; then
  skip_part e2e "${E2E_CHECK##*$'\n'}"
else
  rm -rf "$E2E_WORKDIR"
  run_part e2e 110 "$PYTHON" -m fognet_jax.main --config=configs/synthetic_224.py \
      --workdir="$E2E_WORKDIR" --mode=train_only --config.data.data_dir="$E2E_DATA_DIR" \
      "${E2E_OVERRIDES[@]}"
  cp "$E2E_WORKDIR/metrics.jsonl" "$OUTDIR/e2e_metrics.jsonl" 2>/dev/null
  rm -rf "$E2E_WORKDIR"
fi

# 2a: the input pipeline alone, on this host's cores.
if [[ ${E2E_RC} -eq 0 && ${E2E_CHECK##*$'\n'} == ok ]]; then
  if (( TINY == 1 )); then PIPE=(--workers=2 --steps=2 --batch=4); else PIPE=(--workers=8,16 --steps=30 --warmup=6 --batch=16); fi
  run_part pipeline 75 "$PYTHON" benchmarks/input_pipeline.py --skip_default_build \
      --data_dir="$E2E_DATA_DIR" --pixels=device --worker_type=thread,process "${PIPE[@]}"
else
  skip_part pipeline "${E2E_CHECK##*$'\n'}"
fi

# 2b: cuDNN fused attention (padded to 256 tokens, masked) against XLA's, then with the
# towers' residual stream in bfloat16 too (perf.residual_dtype), same process; the JSON keeps
# the variants finished if the last is cut short. With --tiny (no cuDNN on a CPU) the same
# plumbing runs fp32, fp32+remat and bf16+res16.
if (( TINY == 0 )); then ATTN_VARIANTS=bf16,bf16+cudnn,bf16+cudnn+res16
else ATTN_VARIANTS=fp32,fp32+remat,bf16+res16; fi
run_part cudnn_b16 150 "$PYTHON" "${TS[@]}" --batch=$B16 --variants=$ATTN_VARIANTS \
    --json_out="$OUTDIR/cudnn_b16.json"

# 3: FogNet B=32 (torch first: both frameworks' working sets do not fit at once).
run_part fognet_b32 130 "$PYTHON" "${TS[@]}" --batch=$B32 --compare_torch \
    --torch_modes="$TORCH_MODES" --repeats=1 --order=torch_first \
    --json_out="$OUTDIR/fognet_b32.json"

# 4: ActionCLIP B=16.
run_part actionclip_b16 80 "$PYTHON" "${TS[@]}" --arch=actionclip --batch=$B16 --compare_torch \
    --torch_modes=eager --repeats=2 --json_out="$OUTDIR/actionclip_b16.json"

# 5: the step alone at the e2e shapes (the synthetic benchmark's 14 classes).
if [[ -f $OUTDIR/e2e_metrics.jsonl ]]; then
  run_part e2e_step 75 "$PYTHON" benchmarks/train_step.py "${SHAPES[@]}" --classes=14 \
      --variants=$DTYPE --steps=$STEPS --warmup=$WARMUP --batch=$E2E_BATCH \
      --json_out="$OUTDIR/e2e_step.json"
else
  skip_part e2e_step "no end-to-end figure to compare with"
fi

"$PYTHON" - "$OUTDIR" <<'PY' | tee "$OUTDIR/summary.md"
"""Gathers the parts' JSON and logs into one Markdown summary."""
import json
import os
import statistics
import sys

out = sys.argv[1]


def load(name):
  path = os.path.join(out, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def f(x, spec='.2f'):
  return 'n/a' if x is None else format(x, spec)


print('# GPU suite summary\n')
with open(os.path.join(out, 'status.tsv')) as fh:
  rows = [line.rstrip('\n').split('\t') for line in fh]
print('| ' + ' | '.join(rows[0]) + ' |')
print('|' + '---|' * len(rows[0]))
for r in rows[1:]:
  print('| ' + ' | '.join(r) + ' |')

print('\n## Train step: ours against the PyTorch reference (same process, alternating)\n')
print('| part | device | batch | ours pairs/s | ours MFU | TFLOP/step | torch mode | torch pairs/s '
      '| ours / torch | repeats (ours; torch) |')
print('|---|---|---|---|---|---|---|---|---|---|')
step_b16 = None
for part in ('fognet_b16', 'fognet_b32', 'actionclip_b16'):
  d = load(part + '.json')
  if not d:
    print(f'| {part} | no result | | | | | | | | |')
    continue
  meta = d['meta']
  for r in d['results']:
    if part == 'fognet_b16':
      step_b16 = (r, meta)
    ours = [t['clip_pairs_per_s'] for t in r['timings'] if t['impl'] == 'ours']
    mfu = f(100 * r['mfu'], '.1f') + ' %' if r.get('mfu') is not None else 'n/a'
    for mode in meta.get('torch_modes', []):
      tm = r['torch'][mode]
      reps = [t.get('clip_pairs_per_s') for t in r['timings'] if t['impl'] == 'torch-' + mode]
      print(f'| {part} {r["variant"]} | {meta["device_kind"]} | {meta["batch"]} '
            f'| {r["clip_pairs_per_s"]:.2f} | {mfu} | {r["step_tflops"]:.4g} | {mode} '
            f'| {f(tm["clip_pairs_per_s"])} | {f(tm["ours_over_torch"], ".3f")} '
            f'| {", ".join(f(x) for x in ours)}; {", ".join(f(x) for x in reps)} |')

d = load('cudnn_b16.json')
if d:
  print('\n## Part 2b, one process: XLA attention against cuDNN fused attention (padded to a '
        'multiple of 64, masked), then cuDNN with a bfloat16 residual stream (res16); --tiny: '
        'fp32, fp32+remat, bf16+res16' + ('' if d['meta'].get('complete', True) else
        '; cut short, variants finished: ' + ', '.join(r['variant'] for r in d['results']))
        + '\n')
  print('| variant | batch | pairs/s | MFU | compile s | XLA memory (GiB) | vs first row |')
  print('|---|---|---|---|---|---|---|')
  first = d['results'][0]['clip_pairs_per_s'] if d['results'] else None
  for r in d['results']:
    mfu = f(100 * r['mfu'], '.1f') + ' %' if r.get('mfu') is not None else 'n/a'
    mem = r.get('xla_total_bytes')
    print(f'| {r["variant"]} | {d["meta"]["batch"]} | {r["clip_pairs_per_s"]:.2f} | {mfu} '
          f'| {f(r.get("compile_s"), ".1f")} | {f(mem / 2**30 if mem else None)} '
          f'| {f(r["clip_pairs_per_s"] / first if first else None, ".3f")} |')

print('\n## End to end (python -m fognet_jax.main, real input pipeline)\n')
path = os.path.join(out, 'e2e_metrics.jsonl')
if not os.path.exists(path):
  print('no end-to-end run: see e2e.log')
else:
  with open(path) as fh:
    hist = [json.loads(line) for line in fh if line.strip()]
  steady = hist[1:]  # the first interval includes compilation
  if not steady:
    print('too few logged intervals for a steady-state figure')
  else:
    steps = [b['step'] - a['step'] for a, b in zip(hist, hist[1:])]
    secs = sum(n / r['steps_per_sec'] for n, r in zip(steps, steady))
    batch = steady[0]['clip_pairs_per_sec'] / steady[0]['steps_per_sec']
    e2e = sum(steps) * batch / secs
    print(f'steady state over steps {hist[0]["step"]}-{hist[-1]["step"]}: {e2e:.2f} clip pairs/s '
          f'(intervals: {", ".join(f(r["clip_pairs_per_sec"]) for r in steady)})')
    ref = load('e2e_step.json')
    if ref:
      step = ref['results'][0]['clip_pairs_per_s']
      print(f'step alone at the same shapes (e2e_step): {step:.2f} clip pairs/s; end to end / step '
            f'= {e2e / step:.3f}')
    elif step_b16:
      r, meta = step_b16
      fl = r['flops']
      txt = fl['text_forward_flops'] / meta['classes'] * 14
      scaled = r['clip_pairs_per_s'] * fl['step_flops'] / (
          3 * fl['image_forward_flops'] + 3 * txt)
      print(f'no e2e_step figure; fognet_b16 scaled by analytic FLOPs to 14 classes: '
            f'{scaled:.2f} clip pairs/s; end to end / step = {e2e / scaled:.3f} (approximate)')

pipe = os.path.join(out, 'pipeline.log')
if os.path.exists(pipe):
  with open(pipe) as fh:
    lines = [l.rstrip() for l in fh if l.startswith('|') or l.startswith('training batch')
             or l.startswith('device-side') or l.startswith('cpus visible')]
  if lines:
    print('\n## Input pipeline alone on this host (part 2a)\n')
    print('\n'.join(lines))

top = os.path.join(out, 'profile_b16_top20.txt')
if os.path.exists(top):
  print('\n## Profile of the FogNet B=16 step (top ops by self time)\n')
  with open(top) as fh:
    print('```\n' + fh.read().rstrip() + '\n```')
PY
echo "suite finished in $((SECONDS - START))s; outputs in $OUTDIR"
