"""The reports a failed Orbax write leaves behind are dropped; other asyncio reports are kept."""

import logging

from fognet_jax import checkpointing


def _record(message: str) -> logging.LogRecord:
  return logging.LogRecord('asyncio', logging.ERROR, __file__, 1, message, None, None)


def test_unread_errors_of_checkpoint_writes_are_dropped_and_nothing_else():
  drop = checkpointing._drop_orphaned_write_reports  # pylint: disable=protected-access
  write = (
    'Future exception was never retrieved\nfuture: <Future finished exception='
    'ValueError(\'RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database at local file '
    '"/run/checkpoints/2.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/"'
    "')>"
  )
  assert drop(_record(write)) is False
  assert drop(_record(write.replace('Future', 'Task', 1))) is False
  # An unread error that is not a checkpoint write's, and any other asyncio report, stay.
  assert (
    drop(
      _record(
        'Future exception was never retrieved\nfuture: <Future finished '
        "exception=ValueError('boom')>"
      )
    )
    is True
  )
  assert drop(_record('Executing <Task ...> took 0.5 seconds')) is True


def test_the_filter_is_on_the_asyncio_logger_once_a_checkpointer_exists(tmp_path):
  checkpointing._drop_failed_read_reports()  # pylint: disable=protected-access
  checkpointing._drop_failed_read_reports()  # pylint: disable=protected-access
  filters = logging.getLogger('asyncio').filters
  assert filters.count(checkpointing._drop_orphaned_write_reports) == 1  # pylint: disable=protected-access
