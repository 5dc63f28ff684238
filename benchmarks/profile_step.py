r"""Top ops by self time from a `jax.profiler` trace (its Perfetto JSON; no extra packages).

`jax.profiler.trace(logdir, create_perfetto_trace=True)` writes
`logdir/plugins/profile/<run>/perfetto_trace.json.gz` (Chrome trace-event JSON). This module
reads the newest such file and sums, per XLA op, the self time of its events (an event's
duration less that of the events nested in it on the same thread):

* on GPUs / TPUs, the events of the device processes (`/device:GPU:0`, ...): kernels on the
  streams, grouped by their `hlo_op` argument where the profiler recorded one (else by kernel
  name);
* on the CPU, the host events that carry an `hlo_op` argument (the XLA:CPU thunks).

Times are per step (divided by the number of profiled steps). Ops that run in parallel
(several CPU threads, several streams) add up, so the percentages are of the summed op time,
not of the wall time.

  python benchmarks/profile_step.py /tmp/prof/bf16 --steps=3 --top=20
  (benchmarks/train_step.py --profile_dir=DIR traces its step and calls this.)
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

_SUFFIX = re.compile(r'[._]\d+$')


def find_trace(logdir: str) -> str:
  """Newest `perfetto_trace.json.gz` under `logdir` (the profiler's run directories)."""
  paths = glob.glob(os.path.join(logdir, '**', 'perfetto_trace.json.gz'), recursive=True)
  if not paths:
    raise FileNotFoundError(
      f'no perfetto_trace.json.gz under {logdir!r}: trace with '
      'jax.profiler.trace(logdir, create_perfetto_trace=True)'
    )
  return max(paths, key=os.path.getmtime)


def load_events(path: str) -> list[dict]:
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt') as f:
    data = json.load(f)
  events = data.get('traceEvents', []) if isinstance(data, dict) else data
  if not isinstance(events, list):
    raise ValueError(f'{path}: no traceEvents list')
  return events


def _self_times(events: list[dict]) -> list[tuple[dict, float]]:
  """(event, self time in us) for complete ('X') events, nesting resolved per thread."""
  by_thread = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X' and 'dur' in e and 'ts' in e:
      by_thread[(e.get('pid'), e.get('tid'))].append(e)
  out = []
  for evs in by_thread.values():
    evs.sort(key=lambda e: (float(e['ts']), -float(e['dur'])))
    selfs = [float(e['dur']) for e in evs]
    stack: list[int] = []  # indices of open events
    for i, e in enumerate(evs):
      ts = float(e['ts'])
      while stack and float(evs[stack[-1]]['ts']) + float(evs[stack[-1]]['dur']) <= ts:
        stack.pop()
      if stack:
        selfs[stack[-1]] -= float(e['dur'])
      stack.append(i)
    out.extend((e, max(s, 0.0)) for e, s in zip(evs, selfs))
  return out


def hlo_shapes(hlo_text: str) -> dict[str, str]:
  """op name -> its result type and opcode, from optimized HLO text (`compiled.as_text()`)."""
  out = {}
  for m in re.finditer(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)$', hlo_text, re.M):
    rhs = m.group(2)
    rhs = re.sub(r'\{[\d,]*\}', '', rhs)  # layouts
    op = re.match(r'(\S+(?:\[[^\]]*\])?|\([^)]*\))\s+([\w\-]+)', rhs)
    out.setdefault(m.group(1), f'{op.group(2)} {op.group(1)}' if op else rhs[:60])
  return out


def summarize(
  logdir_or_trace: str, *, top: int = 20, steps: int = 1, hlo_text: str | None = None
) -> dict:
  """Top `top` ops by self time (ms per step), plus totals by op category.

  With `hlo_text` (the step's optimized HLO), each op row also gets its opcode and result
  shape ('fusion f32[8,197,3072]').
  """
  path = logdir_or_trace if os.path.isfile(logdir_or_trace) else find_trace(logdir_or_trace)
  events = load_events(path)
  names = {
    e.get('pid'): e.get('args', {}).get('name', '')
    for e in events
    if e.get('ph') == 'M' and e.get('name') == 'process_name'
  }
  device_pids = {
    pid
    for pid, n in names.items()
    if not n.startswith('/host') and any(k in n for k in ('/device:', 'GPU', 'TPU'))
  }
  timed = _self_times(events)
  device = [(e, s) for e, s in timed if e.get('pid') in device_pids]
  if device:
    used = sorted({names[e.get('pid')] for e, _ in device})
    source = f'device ({", ".join(used)})'
    selected = device
  else:
    source = 'host (XLA:CPU thunks)'
    selected = [(e, s) for e, s in timed if 'hlo_op' in e.get('args', {})]
  if not selected:
    raise ValueError(f'{path}: no device events and no events with an hlo_op argument')
  steps = max(int(steps), 1)
  per_op = collections.defaultdict(lambda: {'self_us': 0.0, 'count': 0, 'names': set()})
  per_cat = collections.defaultdict(float)
  for e, s in selected:
    args = e.get('args', {})
    op = args.get('hlo_op') or e.get('name', '?')
    row = per_op[op]
    row['self_us'] += s
    row['count'] += 1
    if len(row['names']) < 3:
      row['names'].add(e.get('name', '?'))
    per_cat[_SUFFIX.sub('', op)] += s
  total = sum(r['self_us'] for r in per_op.values())
  ops = sorted(per_op.items(), key=lambda kv: -kv[1]['self_us'])
  rows = [
    {
      'op': op,
      'ms_per_step': r['self_us'] / steps / 1e3,
      'percent': 100 * r['self_us'] / total if total else 0.0,
      'calls_per_step': r['count'] / steps,
      'event_names': sorted(r['names']),
    }
    for op, r in ops[:top]
  ]
  if hlo_text:
    shapes = hlo_shapes(hlo_text)
    for r in rows:
      r['hlo'] = shapes.get(r['op'], '')
  cats = sorted(per_cat.items(), key=lambda kv: -kv[1])
  return {
    'trace': path,
    'source': source,
    'steps': steps,
    'ops_total': len(per_op),
    'op_ms_per_step': total / steps / 1e3,
    'top_ops': rows,
    'categories': [
      {'category': c, 'ms_per_step': v / steps / 1e3, 'percent': 100 * v / total if total else 0.0}
      for c, v in cats[:top]
    ],
  }


def format_report(report: dict, width: int = 60) -> str:
  def short(s):
    return s if len(s) <= width else s[: width - 3] + '...'

  lines = [
    f'trace {report["trace"]}',
    f'source: {report["source"]}; {report["ops_total"]} ops, '
    f'{report["op_ms_per_step"]:.2f} ms of op self time per step',
    f'{"#":>3} {"op":<{width}}{"ms/step":>10}{"%":>7}{"calls":>7}  HLO / event',
  ]
  for i, r in enumerate(report['top_ops'], 1):
    ev = r['event_names'][0] if r['event_names'] else ''
    ev = r.get('hlo') or ('' if ev == r['op'] else short(ev))
    lines.append(
      f'{i:>3} {short(r["op"]):<{width}}{r["ms_per_step"]:>10.3f}'
      f'{r["percent"]:>7.1f}{r["calls_per_step"]:>7.0f}  {ev}'
    )
  lines.append('by category (op name without its numeric suffix):')
  for c in report['categories'][:10]:
    lines.append(
      f'    {short(c["category"]):<{width}}{c["ms_per_step"]:>10.3f}{c["percent"]:>7.1f}'
    )
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('logdir', help='trace directory (or a perfetto_trace.json.gz file)')
  p.add_argument('--steps', type=int, default=1, help='steps in the trace (for ms per step)')
  p.add_argument('--top', type=int, default=20)
  p.add_argument('--json_out', default=None)
  a = p.parse_args(argv)
  report = summarize(a.logdir, top=a.top, steps=a.steps)
  print(format_report(report))
  if a.json_out:
    with open(a.json_out, 'w') as f:
      json.dump(report, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
