r"""Write the CLIP towers of a trained run as a checkpoint that `model.init_from` loads.

  python -m fognet_jax.export_clip --workdir=RUN --out=DIR [--checkpoint=STEP]

Restores the run's checkpoint (the latest, or `--checkpoint`: a step or a checkpoint
directory) with the run's own config (`RUN/config.json`) and writes its CLIP model (image and
text towers, logit scale; FogNet's FAS / ME / temporal modules are not part of CLIP) with
`clip_weights.save`: `DIR/clip_config.json` (the architecture) and `DIR/params` (Orbax,
float32). `--config.model.init_from=DIR` then starts a run from it through the same loader as
OpenAI or Hugging Face weights (`clip_weights.load`). configs/synthetic_pretrain.py's run is
exported this way into `pretrained/synthetic_tiny_clip/`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow 2.21 on AVX-512 CPUs logs a oneDNN line at import that TF_CPP_MIN_LOG_LEVEL does not hide.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from flax import nnx

from fognet_jax import checkpointing
from fognet_jax import clip_weights
from fognet_jax import main as main_lib
from fognet_jax import predict
from fognet_jax import sharding

FLAGS = flags.FLAGS


def export(workdir: str, out: str, checkpoint: str | None = None) -> int:
  """Writes the CLIP towers of `workdir`'s checkpoint to `out`; returns the step exported."""
  if os.path.exists(os.path.join(out, clip_weights.ORBAX_PARAMS_DIR)):
    raise FileExistsError(f'{out}: already holds a saved CLIP model; choose another --out')
  run_dir, step = checkpointing.locate(workdir, checkpoint)
  config = predict.load_config(workdir)
  graphdef, state = main_lib.restore_state(config, sharding.make_mesh(1), run_dir, step)
  model = nnx.merge(graphdef, state.params, state.rest)
  clip_weights.save(model.clip, out)
  return int(state.step)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    step = export(FLAGS.workdir, FLAGS.out, FLAGS.checkpoint)
  except (FileNotFoundError, FileExistsError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote the CLIP towers of {FLAGS.workdir} at step {step} to {FLAGS.out}')
  return 0


if __name__ == '__main__':
  flags.DEFINE_string(
    'workdir', None, 'Training run directory (config.json, checkpoints/).', required=True
  )
  flags.DEFINE_string(
    'out', None, 'Directory to write (clip_config.json + params/).', required=True
  )
  flags.DEFINE_string('checkpoint', None, 'Checkpoint step or directory (default: the latest).')
  app.run(main)
