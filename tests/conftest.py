"""Test setup: CPU only, 8 host devices for the sharding tests, quiet TensorFlow."""

import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow 2.21 on AVX-512 CPUs logs a oneDNN line at import that TF_CPP_MIN_LOG_LEVEL does not hide.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
_flags = os.environ.get('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=8').strip()
