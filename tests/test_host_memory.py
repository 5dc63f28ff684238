"""Huge pages for the host's buffers: when the entry points restart with glibc's tunable."""
import os
import platform

import pytest

from fognet_jax import host_memory as hm

import main_testutil

GLIBC = ('glibc', '2.36')


def _value(environ, system='Linux', libc=GLIBC):
  return hm.tunables_with_huge_pages(environ, system=system, libc=libc)


def test_a_plain_linux_glibc_process_restarts_with_the_tunable():
  assert _value({}) == 'glibc.malloc.hugetlb=1'
  assert _value({'GLIBC_TUNABLES': ''}) == 'glibc.malloc.hugetlb=1'
  assert _value({}, libc=('glibc', '2.35')) == 'glibc.malloc.hugetlb=1'


def test_the_users_other_tunables_are_kept():
  assert (_value({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0'})
          == 'glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.hugetlb=1')


@pytest.mark.parametrize('tunables', ['glibc.malloc.hugetlb=0', 'glibc.malloc.hugetlb=2',
                                      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0'])
def test_a_hugetlb_the_user_chose_is_left_alone(tunables):
  assert _value({'GLIBC_TUNABLES': tunables}) is None


def test_a_similar_tunable_name_is_not_mistaken_for_hugetlb():
  assert (_value({'GLIBC_TUNABLES': 'glibc.malloc.hugetlbx=1'})
          == 'glibc.malloc.hugetlbx=1:glibc.malloc.hugetlb=1')


@pytest.mark.parametrize('value', ['0', 'false', 'No', ' off '])
def test_the_opt_out_variable_turns_it_off(value):
  assert _value({hm.OPT_OUT: value}) is None


@pytest.mark.parametrize('value', ['1', 'yes', ''])
def test_other_values_of_the_opt_out_variable_keep_it_on(value):
  assert _value({hm.OPT_OUT: value}) == 'glibc.malloc.hugetlb=1'


def test_a_restarted_process_never_restarts_again():
  assert _value({hm._DONE: '1'}) is None  # pylint: disable=protected-access


@pytest.mark.parametrize('system,libc', [
    ('Darwin', ('', '')), ('Windows', ('', '')), ('Linux', ('', '')),  # musl: no glibc name
    ('Linux', ('glibc', '2.34')), ('Linux', ('glibc', '2.17')), ('Linux', ('glibc', 'x'))])
def test_systems_without_the_tunable_are_not_restarted(system, libc):
  assert _value({}, system=system, libc=libc) is None


def test_the_log_line_says_which_allocator_setting_the_process_has():
  assert 'transparent huge pages' in hm.describe({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'})
  hugetlbfs = hm.describe({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=2'})
  assert 'huge pages' in hugetlbfs and 'transparent' not in hugetlbfs  # 2: hugetlbfs pages
  assert 'from GLIBC_TUNABLES' in hugetlbfs
  assert 'set at start-up' in hm.describe({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1',
                                           hm._DONE: '1'})  # pylint: disable=protected-access
  assert 'defaults' in hm.describe({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})
  assert 'defaults' in hm.describe({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=1'})
  assert 'defaults' in hm.describe({})


def _main_log(tmp_path, data_args, **env):
  """stderr of a one-step `python -m fognet_jax.main --mode=train_only` run (its start-up log
  is printed once the run has started)."""
  base = {k: v for k, v in os.environ.items()
          if k not in ('GLIBC_TUNABLES', hm.OPT_OUT, hm._DONE)}  # pylint: disable=protected-access
  r = main_testutil.run_module('fognet_jax.main', '--config=configs/synthetic.py:scratch',
                               '--mode=train_only', f'--workdir={tmp_path}', *main_testutil.TINY,
                               '--config.train.num_train_steps=1', *data_args,
                               env=dict(base, **env), timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stderr


@pytest.mark.skipif(hm.tunables_with_huge_pages({}, system=platform.system(),
                                                libc=platform.libc_ver()) is None,
                    reason='needs Linux with glibc >= 2.35')
def test_the_training_entry_point_runs_with_huge_pages_unless_turned_off(tmp_path):
  data = main_testutil.tiny_data_args(tmp_path)
  on = _main_log(tmp_path / 'on', data)
  assert ('glibc malloc with transparent huge pages (glibc.malloc.hugetlb=1; set at start-up'
          in on), on[-2000:]
  off = _main_log(tmp_path / 'off', data, FOGNET_JAX_HUGE_PAGES='0')
  assert 'glibc malloc defaults' in off, off[-2000:]
  kept = _main_log(tmp_path / 'kept', data, GLIBC_TUNABLES='glibc.malloc.hugetlb=0')
  assert 'glibc malloc defaults' in kept, kept[-2000:]
