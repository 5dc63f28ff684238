r"""End-to-end throughput run: the generated benchmark rendered at 224x224, ViT-B/16 bf16, 8 frames.

Measures what `python -m fognet_jax.main` sustains with the real input pipeline (JPEG decoding,
frame sampling, paired augmentation, host-to-device transfer) at the paper's input size, to
compare its logged `clip_pairs_per_sec` with the step alone (`benchmarks/train_step.py` at the
same shapes: `--backbone=ViT-B/16 --image_size=224 --frames=8 --batch=16 --classes=14
--variants=bf16`). Not an accuracy recipe: random initialisation, 60 steps, no evaluation.

  python -m fognet_jax.main --config=configs/synthetic_224.py --workdir=/tmp/e2e --mode=train_only

Data: `synthetic_fog_act/bench224` (224x224, 16 frames, 56 train / 56 test clips; built on first
use, or prepared ahead with `python -m tfds_fogact.common synthetic_fog_act/bench224
--data_dir=DIR` and passed as `--config.data.data_dir=DIR`). The byte tokenizer needs no
vocabulary files; prompts are still 77 tokens, so the text tower costs what CLIP's BPE would.
Logged every 10 steps: the first interval includes compilation, the later ones are the figure.
Starts from configs/fogact.py's recipe; variants as there (e.g.
`configs/synthetic_224.py:actionclip`).
"""

import importlib.util
import os


def _config_file(name):
  """The module of configs/<name>.py, loaded by path (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'fognet_configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


fogact = _config_file('fogact')


def get_config(arg=None):
  """ViT-B/16 bf16 on synthetic_fog_act/bench224 at 8x224^2, batch 16, 60 steps."""
  config = fogact.get_config()
  config.data.dataset = 'synthetic_fog_act/bench224'
  config.data.num_frames = 8
  config.data.image_size = 224
  # Worker processes, two cores left to the training loop on a 16-core GPU host. Threads of
  # one process top out near 360-400 training pairs/s whatever the core count, as the Python
  # parts of reading and sampling hold the GIL, and the training loop needs it too; the main
  # process of process workers holds it 0.6 ms per pair, about 1700 pairs/s, and in steady
  # state they feed as much per core as threads
  # (docs/perf_notes.md, "Worker processes"; part 2a of gpu_suite.sh measures both).
  config.perf.worker_type = 'process'
  config.perf.num_workers = 14
  config.perf.prefetch = 4

  config.model.backbone = 'ViT-B/16'
  config.model.init_from = None
  config.model.dtype = 'bfloat16'
  config.model.tokenizer.kind = 'byte'

  config.train.batch_size = 16
  config.train.num_train_steps = 60
  config.train.warmup_epochs = 0.0
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 100000  # only the final save
  config.train.keep_checkpoints = 1
  return fogact.apply_variant(config, arg)
