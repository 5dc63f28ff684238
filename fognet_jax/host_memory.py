"""Transparent huge pages for the host's large buffers (Linux with glibc 2.35 or later).

XLA:CPU allocates every execution's temporary buffers afresh (2.4 GiB for the ViT-B/16 train
step at 1 pair x 4 frames), above glibc's mmap threshold, so the kernel maps and zeroes each
4 KiB page again at every step: millions of page faults a minute. With the glibc tunable
``glibc.malloc.hugetlb=1``, malloc asks for transparent huge pages (``madvise``) on the chunks
it maps, so the same memory takes about 512 times fewer faults. glibc reads its tunables only
when a process starts, so ``python -m fognet_jax.main`` restarts itself once, before its
imports, with the tunable added to ``GLIBC_TUNABLES`` (`reexec_with_huge_pages`).

``FOGNET_JAX_HUGE_PAGES=0`` turns this off; a ``GLIBC_TUNABLES`` that already names
``glibc.malloc.hugetlb`` is left as it is. Figures: docs/perf_notes.md, "Huge pages for
the host's buffers"; docs/training.md, "Host memory: huge pages".
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional

TUNABLE = 'glibc.malloc.hugetlb'
SETTING = f'{TUNABLE}=1'
OPT_OUT = 'FOGNET_JAX_HUGE_PAGES'  # '0' (or 'false', 'no', 'off'): leave the allocator alone
_DONE = 'FOGNET_JAX_HUGE_PAGES_SET'  # set on the restart: never restart twice
MIN_GLIBC = (2, 35)  # the first glibc with the hugetlb tunable; older ones ignore it


def _glibc_version(libc: tuple[str, str]) -> Optional[tuple[int, int]]:
  name, version = libc
  if name != 'glibc':
    return None
  try:
    major, minor = version.split('.')[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def _tunables(environ: Mapping[str, str]) -> dict[str, str]:
  """``GLIBC_TUNABLES`` (``name=value:name=value``) as a dict; an item without ``=`` maps
  to ''."""
  items = (item.partition('=') for item in environ.get('GLIBC_TUNABLES', '').split(':') if item)
  return {name: value for name, _, value in items}


def tunables_with_huge_pages(environ: Mapping[str, str], *, system: str,
                             libc: tuple[str, str]) -> Optional[str]:
  """The ``GLIBC_TUNABLES`` value to restart with, or None to leave the process as it is.

  None on other systems and C libraries, on glibc older than 2.35, when ``FOGNET_JAX_HUGE_PAGES``
  turns it off, when the tunables already name ``glibc.malloc.hugetlb`` (the user's choice is
  kept), and in a process that this module has already restarted.
  """
  if system != 'Linux' or environ.get(_DONE):
    return None
  if environ.get(OPT_OUT, '1').strip().lower() in ('0', 'false', 'no', 'off'):
    return None
  version = _glibc_version(libc)
  if version is None or version < MIN_GLIBC:
    return None
  if TUNABLE in _tunables(environ):
    return None
  current = environ.get('GLIBC_TUNABLES', '')
  return f'{current}:{SETTING}' if current else SETTING


def reexec_with_huge_pages() -> None:
  """Restarts this program (same interpreter, options and arguments) with huge pages on.

  Returns without doing anything where `tunables_with_huge_pages` says None. Call it first
  thing in a program's ``__main__`` block, before heavy imports: what ran before is run again.
  """
  value = tunables_with_huge_pages(os.environ, system=platform.system(),
                                   libc=platform.libc_ver())
  if value is None:
    return
  os.environ['GLIBC_TUNABLES'] = value
  os.environ[_DONE] = '1'
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)


def describe(environ: Mapping[str, str] = os.environ) -> str:
  """One line for the run's log: whether this process runs with huge pages."""
  value = _tunables(environ).get(TUNABLE, '0')
  if value in ('', '0'):
    return 'host memory: glibc malloc defaults (4 KiB pages)'
  kind = 'transparent huge pages' if value == '1' else 'huge pages'  # 2: hugetlbfs pages
  source = (f'set at start-up; {OPT_OUT}=0 turns it off' if environ.get(_DONE)
            else 'from GLIBC_TUNABLES')
  return f'host memory: glibc malloc with {kind} ({TUNABLE}={value}; {source})'
