"""Test helpers: random transformers CLIPModel checkpoints and OpenAI-style .pt files."""

import numpy as np


# transformers' CLIPConfig kwargs for our named configs.
def hf_config_kwargs(cfg):
  """transformers.CLIPConfig keyword arguments equivalent to a fognet_jax CLIPConfig."""
  return dict(
    projection_dim=cfg.embed_dim,
    text_config=dict(
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.text_width,
      intermediate_size=cfg.text_mlp,
      num_hidden_layers=cfg.text_layers,
      num_attention_heads=cfg.text_heads,
      max_position_embeddings=cfg.context_length,
      hidden_act='quick_gelu',
      # Pool at argmax(token id), as OpenAI CLIP does.
      eos_token_id=2,
    ),
    vision_config=dict(
      hidden_size=cfg.vision_width,
      intermediate_size=cfg.vision_mlp,
      num_hidden_layers=cfg.vision_layers,
      num_attention_heads=cfg.vision_heads,
      image_size=cfg.image_size,
      patch_size=cfg.patch_size,
      hidden_act='quick_gelu',
    ),
  )


def random_hf_model(cfg, seed=0):
  """A transformers CLIPModel (fp32, eval mode, eager attention) with random weights.

  LayerNorm scales/biases and all biases are randomised too, so that a wrong mapping of
  any tensor shows in the outputs.
  """
  import torch
  import transformers

  torch.manual_seed(seed)
  config = transformers.CLIPConfig(**hf_config_kwargs(cfg))
  config._attn_implementation = 'eager'
  model = transformers.CLIPModel(config).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == 'logit_scale':
        p.fill_(float(np.log(1 / 0.07)) + 0.3)
      elif (
        name.endswith('layer_norm1.weight')
        or name.endswith('layer_norm2.weight')
        or ('layernorm' in name or 'layrnorm' in name or 'final_layer_norm' in name)
      ):
        if name.endswith('.weight'):
          p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        else:
          p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      elif name.endswith('.bias'):
        p.copy_(0.02 * torch.randn(p.shape, generator=gen))
  return model


def openai_state_dict(hf_model):
  """The HF model's weights under OpenAI CLIP key names (fused in_proj), as numpy."""
  sd = {k: v.detach().cpu().numpy() for k, v in hf_model.state_dict().items()}
  out = {'logit_scale': sd['logit_scale']}
  v, t = 'vision_model', 'text_model'

  def blocks(src, dst, n):
    for i in range(n):
      s, d = f'{src}.encoder.layers.{i}', f'{dst}.resblocks.{i}'
      out[f'{d}.attn.in_proj_weight'] = np.concatenate(
        [sd[f'{s}.self_attn.{q}_proj.weight'] for q in 'qkv'], 0
      )
      out[f'{d}.attn.in_proj_bias'] = np.concatenate(
        [sd[f'{s}.self_attn.{q}_proj.bias'] for q in 'qkv'], 0
      )
      for a, b in (
        ('attn.out_proj', 'self_attn.out_proj'),
        ('ln_1', 'layer_norm1'),
        ('ln_2', 'layer_norm2'),
        ('mlp.c_fc', 'mlp.fc1'),
        ('mlp.c_proj', 'mlp.fc2'),
      ):
        out[f'{d}.{a}.weight'] = sd[f'{s}.{b}.weight']
        out[f'{d}.{a}.bias'] = sd[f'{s}.{b}.bias']

  out['visual.class_embedding'] = sd[f'{v}.embeddings.class_embedding']
  out['visual.positional_embedding'] = sd[f'{v}.embeddings.position_embedding.weight']
  out['visual.conv1.weight'] = sd[f'{v}.embeddings.patch_embedding.weight']
  for a, b in (('ln_pre', 'pre_layrnorm'), ('ln_post', 'post_layernorm')):
    out[f'visual.{a}.weight'] = sd[f'{v}.{b}.weight']
    out[f'visual.{a}.bias'] = sd[f'{v}.{b}.bias']
  out['visual.proj'] = sd['visual_projection.weight'].T.copy()
  blocks(v, 'visual.transformer', hf_model.config.vision_config.num_hidden_layers)
  out['token_embedding.weight'] = sd[f'{t}.embeddings.token_embedding.weight']
  out['positional_embedding'] = sd[f'{t}.embeddings.position_embedding.weight']
  out['ln_final.weight'] = sd[f'{t}.final_layer_norm.weight']
  out['ln_final.bias'] = sd[f'{t}.final_layer_norm.bias']
  out['text_projection'] = sd['text_projection.weight'].T.copy()
  blocks(t, 'transformer', hf_model.config.text_config.num_hidden_layers)
  return out


def save_torchscript_openai(state, path, extra_buffers=True):
  """Writes ``state`` (OpenAI names) as a TorchScript archive via torch.jit.save.

  The module tree mirrors OpenAI's attribute names (``visual.transformer.resblocks.0.attn
  .in_proj_weight``...), like the archives OpenAI publishes; the text blocks carry an
  ``attn_mask`` tensor attribute, as OpenAI's do.
  """
  import torch

  class Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
      return x

  root = Holder()
  for key, value in state.items():
    parts = key.split('.')
    mod = root
    for p in parts[:-1]:
      if not hasattr(mod, p):
        mod.add_module(p, Holder())
      mod = getattr(mod, p)
    tensor = torch.from_numpy(np.array(value))
    if tensor.is_floating_point():
      mod.register_parameter(parts[-1], torch.nn.Parameter(tensor, requires_grad=False))
    else:  # e.g. batch norms' num_batches_tracked
      mod.register_buffer(parts[-1], tensor)
  if extra_buffers:
    n = state['positional_embedding'].shape[0]
    mask = torch.full((n, n), float('-inf')).triu_(1)
    for name, mod in root.named_modules():
      if name.startswith('transformer.resblocks.') and name.count('.') == 2:
        mod.register_buffer('attn_mask', mask.clone())
  torch.jit.save(torch.jit.script(root), path)


def save_plain_state_dict(state, path):
  """Writes ``state`` as a plain ``torch.save`` state dict (OpenAI names)."""
  import torch

  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)


def random_inputs(cfg, n_img=2, n_txt=3, seed=0, image_size=None):
  """Random CLIP-normalised pixels (N, H, W, 3) and token ids with EOT = max id."""
  rng = np.random.default_rng(seed)
  size = image_size or cfg.image_size
  pixels = rng.standard_normal((n_img, size, size, 3)).astype(np.float32)
  ids = np.zeros((n_txt, cfg.context_length), np.int64)
  for i in range(n_txt):
    k = int(rng.integers(2, cfg.context_length))
    ids[i, 0] = cfg.vocab_size - 2
    ids[i, 1:k] = rng.integers(1, cfg.vocab_size - 2, k - 1)
    ids[i, k] = cfg.vocab_size - 1
  return pixels, ids


def hf_outputs(hf_model, pixels, ids, interpolate=False):
  """(image_embeds, text_embeds, logits_per_image) from the PyTorch reference, numpy."""
  import torch

  with torch.no_grad():
    px = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # NHWC -> NCHW
    tid = torch.from_numpy(ids)
    img = hf_model.get_image_features(pixel_values=px, interpolate_pos_encoding=interpolate)
    txt = hf_model.get_text_features(input_ids=tid)
    img = getattr(img, 'pooler_output', img)
    txt = getattr(txt, 'pooler_output', txt)
    out = hf_model(input_ids=tid, pixel_values=px, interpolate_pos_encoding=interpolate)
  return img.numpy(), txt.numpy(), out.logits_per_image.numpy()


def max_rel_err(a, b):
  """max |a - b| / max |b|: the error relative to the reference's scale."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def torch_modified_resnet(layers, width, heads, out_dim, image_size, seed=0):
  """A PyTorch CLIP ``ModifiedResNet`` image tower (OpenAI's layout and parameter names),
  eval mode, with every weight, bias and batch-norm statistic randomised.

  Written against the architecture of OpenAI's ``clip/model.py``: a 3-convolution stem and
  a 2x2 average pool, bottlenecks whose stride is an average pool after the 3x3
  convolution (and before the shortcut's 1x1), an attention pool through
  ``torch.nn.functional.multi_head_attention_forward``.
  """
  import collections

  import torch
  import torch.nn.functional as F
  from torch import nn

  class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.downsample = None
      if stride > 1 or inplanes != planes * 4:
        self.downsample = nn.Sequential(
          collections.OrderedDict(
            [
              ('-1', nn.AvgPool2d(stride)),
              ('0', nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
              ('1', nn.BatchNorm2d(planes * 4)),
            ]
          )
        )

    def forward(self, x):
      out = F.relu(self.bn1(self.conv1(x)))
      out = F.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(self.avgpool(out)))
      identity = x if self.downsample is None else self.downsample(x)
      return F.relu(out + identity)

  class AttentionPool2d(nn.Module):
    def __init__(self, grid, dim, heads, out):
      super().__init__()
      self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim**0.5)
      self.k_proj, self.q_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
      self.c_proj = nn.Linear(dim, out)
      self.heads = heads

    def forward(self, x):
      x = x.flatten(2).permute(2, 0, 1)  # NCHW -> (HW)NC
      x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
      x = x + self.positional_embedding[:, None, :]
      x, _ = F.multi_head_attention_forward(
        query=x[:1],
        key=x,
        value=x,
        embed_dim_to_check=x.shape[-1],
        num_heads=self.heads,
        q_proj_weight=self.q_proj.weight,
        k_proj_weight=self.k_proj.weight,
        v_proj_weight=self.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=self.c_proj.weight,
        out_proj_bias=self.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
      )
      return x.squeeze(0)

  class ModifiedResNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
      self.bn1 = nn.BatchNorm2d(width // 2)
      self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
      self.bn2 = nn.BatchNorm2d(width // 2)
      self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
      self.bn3 = nn.BatchNorm2d(width)
      self.avgpool = nn.AvgPool2d(2)
      inplanes = width
      for i, blocks in enumerate(layers):
        planes = width * 2**i
        mods = []
        for b in range(blocks):
          mods.append(Bottleneck(inplanes, planes, 2 if (i > 0 and b == 0) else 1))
          inplanes = planes * 4
        setattr(self, f'layer{i + 1}', nn.Sequential(*mods))
      self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, out_dim)

    def forward(self, x):
      for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
        x = F.relu(bn(conv(x)))
      x = self.avgpool(x)
      for i in range(len(layers)):
        x = getattr(self, f'layer{i + 1}')(x)
      return self.attnpool(x)

  torch.manual_seed(seed)
  model = ModifiedResNet().eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith('num_batches_tracked'):
        continue
      if name.endswith('running_var'):
        t.copy_(0.5 + torch.rand(t.shape, generator=gen))
      elif name.endswith('running_mean') or name.endswith('.bias'):
        t.copy_(0.1 * torch.randn(t.shape, generator=gen))
      elif '.bn' in name or 'downsample.1' in name or name.startswith('bn'):
        t.copy_(1 + 0.2 * torch.randn(t.shape, generator=gen))  # batch-norm scales
      elif 'conv' in name or 'downsample.0' in name:
        fan_in = t[0].numel()
        t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
  return model


def torch_image_features(model, pixels):
  """Image embeddings of a PyTorch image tower for NHWC numpy pixels."""
  import torch

  with torch.no_grad():
    return model(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
