"""GEMM rate of a dense layer's three products on the CPU, jax (XLA) against torch, in one
process.

A dense layer ``y = x w`` with ``x`` of (M, K) and ``w`` of (K, N) costs three matmuls per
train step: the forward ``x w``, the input gradient ``g wᵀ`` and the weight gradient ``xᵀ g``.
Each is timed as a jitted ``lax.dot_general`` (so XLA picks its own kernel: on CPU, YNNPACK or
Eigen) and as the same torch product, alternating round by round; the table gives GFLOP/s
(the median of ``--reps`` calls) per round and the ratio of the medians over rounds. Both run
on the host CPU, also where a GPU is visible.

  python benchmarks/gemm_rate.py                       # the ViT-B/16 MLP at 8 x 197 tokens
  python benchmarks/gemm_rate.py --m=1576 --k=768 --n=2304 --rounds=5
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/gemm_rate.py

Results: docs/perf_notes.md, "Where the rest of the CPU gap is".
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

PRODUCTS = ('forward x w', 'input grad g wT', 'weight grad xT g')


def _rate(fn, flops: float, reps: int) -> float:
  fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return flops / statistics.median(times) / 1e9


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--m', type=int, default=1576, help='rows of x (tokens)')
  p.add_argument('--k', type=int, default=768, help='input width')
  p.add_argument('--n', type=int, default=3072, help='output width')
  p.add_argument('--reps', type=int, default=10, help='timed calls per product and round')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--threads', type=int, default=None, help="torch's threads (default: its own)")
  a = p.parse_args(argv)
  if min(a.m, a.k, a.n, a.reps, a.rounds) < 1:
    p.error('--m, --k, --n, --reps and --rounds must be >= 1')

  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  if a.threads:
    torch.set_num_threads(a.threads)

  rng = np.random.default_rng(0)
  x, w, g = (rng.standard_normal(s, dtype=np.float32) for s in ((a.m, a.k), (a.k, a.n), (a.m, a.n)))
  cpu = jax.devices('cpu')[0]  # torch's tensors below are CPU tensors: compare like with like
  jx, jw, jg = (jax.device_put(v, cpu) for v in (x, w, g))
  tx, tw, tg = (torch.from_numpy(v) for v in (x, w, g))
  dims = {
    PRODUCTS[0]: (((1,), (0,)), ((), ())),
    PRODUCTS[1]: (((1,), (1,)), ((), ())),
    PRODUCTS[2]: (((0,), (0,)), ((), ())),
  }
  jax_fns = {name: jax.jit(lambda u, v, d=d: lax.dot_general(u, v, d)) for name, d in dims.items()}
  jax_args = {PRODUCTS[0]: (jx, jw), PRODUCTS[1]: (jg, jw), PRODUCTS[2]: (jx, jg)}
  torch_fns = {
    PRODUCTS[0]: lambda: tx @ tw,
    PRODUCTS[1]: lambda: tg @ tw.T,
    PRODUCTS[2]: lambda: tx.T @ tg,
  }
  for name in PRODUCTS:  # the three jax products must agree with torch's
    ours = np.asarray(jax_fns[name](*jax_args[name]))
    ref = torch_fns[name]().numpy()
    err = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    if err > 1e-4:
      raise SystemExit(f'{name}: jax and torch differ by {err:.1e} (relative)')
  flops = 2.0 * a.m * a.k * a.n
  rates = {(impl, name): [] for impl in ('jax', 'torch') for name in PRODUCTS}
  print(
    f'GFLOP/s, ({a.m}, {a.k}) x ({a.k}, {a.n}) and its gradients, median of {a.reps} calls; '
    f'jax {jax.__version__} {jax.devices()[0].device_kind}, torch {torch.__version__} '
    f'({torch.get_num_threads()} threads)'
  )
  print('| round | ' + ' | '.join(f'jax {n} | torch {n}' for n in PRODUCTS) + ' |')
  print('|---|' + '---|---|' * len(PRODUCTS))
  for r in range(a.rounds):
    row = []
    for name in PRODUCTS:
      fn, args = jax_fns[name], jax_args[name]
      rj = _rate(lambda fn=fn, args=args: fn(*args).block_until_ready(), flops, a.reps)
      rt = _rate(torch_fns[name], flops, a.reps)
      rates[('jax', name)].append(rj)
      rates[('torch', name)].append(rt)
      row += [f'{rj:.0f}', f'{rt:.0f}']
    print(f'| {r} | ' + ' | '.join(row) + ' |', flush=True)
  print('\njax / torch (ratio of the medians over rounds):')
  for name in PRODUCTS:
    ratio = statistics.median(rates[('jax', name)]) / statistics.median(rates[('torch', name)])
    print(f'  {name}: {ratio:.2f}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
