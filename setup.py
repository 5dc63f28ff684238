"""fognet_jax: fog-invariant video action recognition (FogNet) in JAX/Flax."""

from setuptools import find_packages
from setuptools import setup

INSTALL_REQUIRES = [
  'jax>=0.7',
  'flax>=0.11',
  'optax',
  'orbax-checkpoint',
  'ml-collections',
  'absl-py',
  'einops',
  'numpy',
  'regex',  # CLIP tokenizer's \p{L} pattern
  'ml_dtypes',  # bfloat16 tensors in checkpoints
  'huggingface_hub',  # CLIP hub names
  'tensorflow-cpu',
  'tensorflow-datasets',
  'array-record',
  'grain',  # the input pipeline's loader (fognet_jax.input_pipeline)
  'importlib_resources',
  'pillow',
  'av',
  'tensorboard',
  'matplotlib',
]

setup(
  name='fognet_jax',
  version='0.1.0',
  description='FogNet: fog-invariant action recognition with two-stream CLIP, in JAX/Flax',
  packages=find_packages(include=['fognet_jax', 'fognet_jax.*', 'tfds_fogact', 'tfds_fogact.*']),
  package_data={'tfds_fogact': ['**/*.txt', '**/*.tsv', '**/dummy_data/**/*', '**/checksums.tsv']},
  include_package_data=True,
  python_requires='>=3.10',
  install_requires=INSTALL_REQUIRES,
  extras_require={
    # torch + transformers + safetensors: the parity references; dill: tfds.testing;
    # nbformat, nbclient, ipykernel: the notebook test (a real IPython kernel);
    # ruff: `make lint` (pinned: a new release may format differently)
    'test': [
      'pytest',
      'pytest-xdist',
      'torch==2.13.0',
      'transformers',
      'safetensors',
      'dill',
      'nbformat',
      'nbclient',
      'ipykernel',
      'ruff==0.17.6',
    ]
  },
)
