"""Writes `dummy_data/generation.json`, the tiny generation spec the builder test uses.

The generated benchmark downloads nothing; its test builds a miniature version
(1 train and 1 test clip per (class, perspective), 4 frames) from this file:

  python -m tfds_fogact.synthetic_fog_act.make_dummy_data
"""

import json
import os

DUMMY_SPEC = {'train_per_group': 1, 'test_per_group': 1, 'num_frames': 4}


def main(out_dir: str = os.path.join(os.path.dirname(__file__), 'dummy_data')) -> str:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, 'generation.json')
  with open(path, 'w') as f:
    json.dump(DUMMY_SPEC, f, indent=2, sort_keys=True)
    f.write('\n')
  return path


if __name__ == '__main__':
  print(main())
