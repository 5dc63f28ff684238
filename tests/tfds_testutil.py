"""Shared base for the TFDS builder tests."""

import tensorflow_datasets as tfds


class BuilderTestCase(tfds.testing.DatasetBuilderTestCase):
  """`tfds.testing.DatasetBuilderTestCase` without a phantom skipped test.

  tf.test.TestCase's legacy `test_session` helper (used by the base class) would be collected
  by pytest as a skipped test; as a property it stays usable on instances but is not a test.
  Subclasses set DATASET_CLASS, SPLITS, ... as usual.
  """

  test_session = property(
    lambda self: tfds.testing.DatasetBuilderTestCase.test_session.__get__(self)
  )
