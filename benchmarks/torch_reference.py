r"""PyTorch reference of the FogNet train step, for speed comparisons with `fognet_jax.train`.

The step a PyTorch user of FogNet would write, with the same compute as ours:

* transformers ``CLIPModel`` (random initialisation, SDPA attention, QuickGELU, LayerNorm eps
  1e-5), ViT-B/16 or a 'tiny' model shaped like ``fognet_jax.models.clip.CONFIGS['tiny']``
  (vision width 64, 2 layers, 4 heads, patch 8; text width 64, 2 layers, 4 heads; embedding 32);
* FogNet (``arch='fognet'``): the clean and the foggy clips go through the image tower in one
  call, frames are mean-pooled; the text tower encodes one prompt (77 tokens) per class; the
  loss is video-text InfoNCE on both streams plus 0.1 x a clean-foggy cross-stream term.
  FAS / ME / CSA are left out (about 0.02 GMACs per clip against 282 for the towers);
* ActionCLIP (``arch='actionclip'``): the foggy stream only, video-text InfoNCE;
* AdamW (fused on CUDA), bf16 autocast (``dtype='bf16'``) or plain fp32;
* ``mode='eager'`` or ``mode='compile'`` (``torch.compile`` of the loss function; the first
  step compiles and is reported as ``first_step_s``, never timed).

Importable (``build_reference`` / ``ReferenceStep.time``; `benchmarks/train_step.py
--compare_torch` alternates it with our step in one process) and runnable alone:

  python benchmarks/torch_reference.py --backbone=tiny --image_size=32 --frames=2 --batch=4 \
      --classes=55 --modes=eager --dtype=fp32
  python benchmarks/torch_reference.py --backbone=ViT-B/16 --image_size=224 --frames=8 \
      --batch=16 --modes=eager,compile --dtype=bf16 --json_out=/tmp/torch_ref.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Callable
from typing import Optional

BACKBONES = ('tiny', 'ViT-B/16', 'ViT-B/32', 'ViT-L/14')
ARCHS = ('fognet', 'actionclip')
MODES = ('eager', 'compile')
VOCAB = 49408  # CLIP's BPE; end-of-text is the largest id, vocab - 1
CONTEXT = 77
CROSS_STREAM_WEIGHT = 0.1


def clip_config(backbone: str, image_size: int, vocab_size: int = VOCAB):
  """transformers ``CLIPConfig`` matching ``fognet_jax.models.clip.CONFIGS[backbone]``."""
  from transformers import CLIPConfig  # pylint: disable=g-import-not-at-top

  shapes = {
    # name: (vision width, layers, heads, patch), (text width, layers, heads), embed
    'tiny': ((64, 2, 4, 8), (64, 2, 4), 32),
    'ViT-B/32': ((768, 12, 12, 32), (512, 12, 8), 512),
    'ViT-B/16': ((768, 12, 12, 16), (512, 12, 8), 512),
    'ViT-L/14': ((1024, 24, 16, 14), (768, 12, 12), 768),
  }
  if backbone not in shapes:
    raise ValueError(f'torch reference: unknown backbone {backbone!r}; known: {sorted(shapes)}')
  (vw, vl, vh, patch), (tw, tl, th), embed = shapes[backbone]
  if image_size % patch:
    raise ValueError(
      f'torch reference: image_size={image_size} is not a multiple of the '
      f'patch size {patch} of {backbone}'
    )
  vision = dict(
    hidden_size=vw,
    intermediate_size=4 * vw,
    num_attention_heads=vh,
    num_hidden_layers=vl,
    image_size=image_size,
    patch_size=patch,
    hidden_act='quick_gelu',
    layer_norm_eps=1e-5,
  )
  text = dict(
    hidden_size=tw,
    intermediate_size=4 * tw,
    num_attention_heads=th,
    num_hidden_layers=tl,
    max_position_embeddings=CONTEXT,
    vocab_size=vocab_size,
    hidden_act='quick_gelu',
    layer_norm_eps=1e-5,
    eos_token_id=vocab_size - 1,
  )
  return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed)


def _features(out):
  """``get_*_features`` returns a tensor (transformers 4) or a model output (5)."""
  return getattr(out, 'pooler_output', out)


@dataclasses.dataclass
class ReferenceStep:
  """One model, optimizer and fixed batch; ``step_fns[mode]()`` runs one train step."""

  backbone: str
  arch: str
  dtype: str
  batch: int
  frames: int
  image_size: int
  classes: int
  device: str
  params: int
  step_fns: dict[str, Callable[[], float]]
  first_step_s: dict[str, float] = dataclasses.field(default_factory=dict)

  def sync(self) -> None:
    import torch  # pylint: disable=g-import-not-at-top

    if self.device == 'cuda':
      torch.cuda.synchronize()

  def time(self, mode: str, *, steps: int, warmup: int) -> dict:
    """Runs ``warmup`` untimed and ``steps`` timed steps of ``mode``; returns the timing."""
    import torch  # pylint: disable=g-import-not-at-top

    if mode not in self.step_fns:
      raise ValueError(
        f'torch reference: mode {mode!r} was not built; built: {list(self.step_fns)}'
      )
    fn = self.step_fns[mode]
    if mode not in self.first_step_s:  # compilation (compile mode) and allocator warm-up
      t0 = time.perf_counter()
      fn()
      self.sync()
      self.first_step_s[mode] = time.perf_counter() - t0
    if self.device == 'cuda':
      torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
      fn()
    self.sync()
    t0 = time.perf_counter()
    loss = None
    for _ in range(steps):
      loss = fn()
    self.sync()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if self.device == 'cuda' else None
    return {
      'mode': mode,
      'step_s': dt,
      'clip_pairs_per_s': self.batch / dt,
      'first_step_s': self.first_step_s[mode],
      'loss': float(loss),
      'peak_bytes': peak,
    }

  def release(self) -> None:
    """Returns the caching allocator's free blocks to the device (between measurements)."""
    import torch  # pylint: disable=g-import-not-at-top

    if self.device == 'cuda':
      torch.cuda.empty_cache()


def build_reference(
  *,
  backbone: str = 'ViT-B/16',
  arch: str = 'fognet',
  image_size: int = 224,
  frames: int = 8,
  batch: int = 16,
  classes: int = 55,
  dtype: str = 'bf16',
  modes: tuple[str, ...] = MODES,
  device: Optional[str] = None,
  seed: int = 0,
  prompt_len: int = 77,
  vocab_size: int = VOCAB,
) -> ReferenceStep:
  """Builds the reference model, optimizer and a fixed random batch; nothing runs yet.

  One model and optimizer serve all ``modes`` (the compiled mode wraps the same loss function),
  so building both costs one set of weights. Prompts are 77 tokens: random ids, end-of-text at
  ``prompt_len - 1``, zeros after it (as ``clip.tokenize`` pads), all 77 encoded.
  ``vocab_size`` sizes the token embedding (259 for the demo's byte tokenizer); the
  end-of-text id is its largest, ``vocab_size - 1``.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from transformers import CLIPModel  # pylint: disable=g-import-not-at-top

  if arch not in ARCHS:
    raise ValueError(f'torch reference: arch must be one of {ARCHS}, got {arch!r}')
  if dtype not in ('bf16', 'fp32'):
    raise ValueError(f"torch reference: dtype must be 'bf16' or 'fp32', got {dtype!r}")
  bad = [m for m in modes if m not in MODES]
  if bad:
    raise ValueError(f'torch reference: unknown mode(s) {bad}; known: {list(MODES)}')
  for name, v in (
    ('image_size', image_size),
    ('frames', frames),
    ('batch', batch),
    ('classes', classes),
  ):
    if v <= 0:
      raise ValueError(f'torch reference: {name} must be positive, got {v}')
  device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
  torch.manual_seed(seed)
  cfg = clip_config(backbone, image_size, vocab_size)
  model = CLIPModel._from_config(cfg, attn_implementation='sdpa').to(device).train()  # pylint: disable=protected-access
  n_params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(
    model.parameters(),
    lr=5e-6,
    weight_decay=0.2,
    betas=(0.9, 0.98),
    eps=1e-8,
    fused=(device == 'cuda'),
  )
  b, t, s, c = batch, frames, image_size, classes
  streams = 2 if arch == 'fognet' else 1
  gen = torch.Generator(device='cpu').manual_seed(seed)
  pixels = torch.randn(streams * b * t, 3, s, s, generator=gen).to(device)  # (S*B*T, 3, H, W)
  ids = torch.randint(1, min(400, vocab_size - 1), (c, CONTEXT), generator=gen)
  if not 2 <= prompt_len <= CONTEXT:
    raise ValueError(f'torch reference: prompt_len must be in [2, {CONTEXT}], got {prompt_len}')
  ids[:, prompt_len - 1] = vocab_size - 1
  ids[:, prompt_len:] = 0
  ids = ids.to(device)
  labels = (torch.arange(b) % c).to(device)
  pair_targets = torch.arange(b, device=device)

  def loss_fn(m, pixels, ids):
    v = _features(m.get_image_features(pixel_values=pixels))  # (S*B*T, D)
    v = F.normalize(v.view(streams, b, t, -1).float().mean(2), dim=-1)  # (S, B, D)
    txt = F.normalize(_features(m.get_text_features(input_ids=ids)).float(), dim=-1)  # (C, D)
    scale = m.logit_scale.exp()
    loss = sum(F.cross_entropy(scale * v[i] @ txt.T, labels) for i in range(streams))
    if streams == 2:  # foggy clip i should match clean clip i among the batch's clean clips
      loss = loss + CROSS_STREAM_WEIGHT * F.cross_entropy(scale * v[1] @ v[0].T, pair_targets)
    return loss

  autocast_on = dtype == 'bf16'

  def make_step(fwd):
    def step() -> float:
      with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast_on):
        loss = fwd(model, pixels, ids)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      return loss.detach()

    return step

  fns = {}
  for mode in modes:
    fns[mode] = make_step(torch.compile(loss_fn) if mode == 'compile' else loss_fn)
  return ReferenceStep(
    backbone=backbone,
    arch=arch,
    dtype=dtype,
    batch=b,
    frames=t,
    image_size=s,
    classes=c,
    device=device,
    params=n_params,
    step_fns=fns,
  )


def environment() -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  dev = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
  return {
    'torch': torch.__version__,
    'transformers': transformers.__version__,
    'torch_device': dev,
    'torch_threads': torch.get_num_threads(),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--backbone', default='ViT-B/16', choices=BACKBONES)
  p.add_argument('--arch', default='fognet', choices=ARCHS)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--frames', type=int, default=8)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--classes', type=int, default=55)
  p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp32'])
  p.add_argument('--modes', default='eager,compile', help='comma-separated: eager, compile')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--json_out', default=None)
  a = p.parse_args(argv)
  modes = tuple(m for m in a.modes.split(',') if m)
  ref = build_reference(
    backbone=a.backbone,
    arch=a.arch,
    image_size=a.image_size,
    frames=a.frames,
    batch=a.batch,
    classes=a.classes,
    dtype=a.dtype,
    modes=modes,
  )
  results = []
  for r in range(a.repeats):
    for mode in modes:
      res = ref.time(mode, steps=a.steps, warmup=a.warmup)
      res['repeat'] = r
      results.append(res)
      ref.release()
      print(json.dumps(res), flush=True)
  print(
    f'\n{a.arch} {a.backbone} {a.frames}x{a.image_size}^2 batch {a.batch} classes '
    f'{a.classes} {a.dtype}, {ref.params / 1e6:.1f}M params, {environment()}'
  )
  print(f'{"mode":<10}{"pairs/s (median)":>18}{"step ms":>10}{"first step s":>14}')
  for mode in modes:
    rs = [x for x in results if x['mode'] == mode]
    med = statistics.median(x['clip_pairs_per_s'] for x in rs)
    print(f'{mode:<10}{med:>18.2f}{1e3 * a.batch / med:>10.1f}{rs[0]["first_step_s"]:>14.1f}')
  if a.json_out:
    with open(a.json_out, 'w') as f:
      json.dump({'meta': {**vars(a), **environment()}, 'results': results}, f, indent=2)
    print(f'wrote {a.json_out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
