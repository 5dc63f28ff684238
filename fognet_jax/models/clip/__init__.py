"""OpenAI CLIP (vision + text transformers) in Flax NNX.

The architecture follows OpenAI's reference exactly, so that the published weights
load without change:

* vision (``vit.py``): patch convolution without bias, class token, learned position
  embeddings, ``ln_pre``, pre-LayerNorm residual blocks, ``ln_post`` on the class token,
  bias-free projection ``proj``; or OpenAI's ModifiedResNet (``resnet.py``);
* text (``text.py``): token + learned position embeddings, causal pre-LayerNorm residual
  blocks, ``ln_final``, pooling at the end-of-text token (the largest token id of each row,
  ``argmax``), bias-free ``text_projection``;
* QuickGELU (``x * sigmoid(1.702 x)``) in the MLPs, LayerNorm epsilon 1e-5, a learned
  ``logit_scale`` (log scale, initialised to ``log(1 / 0.07)``).

The residual block (``transformer.py``) is OpenAI's, on (N, L, width). Exact rewrites that
pay on every platform (see ``docs/clip.md``): dense layers run as 2-D matmuls, q/k/v as one
matmul (``attention.py``), attention head-major, and the last layer only at the pooled token.

Mixed precision: parameters are always float32. With ``dtype=jnp.bfloat16`` the matmuls
and the convolution run in bfloat16, while LayerNorm, the attention softmax and the
residual stream stay in float32; the encoders always return float32. With
``residual_dtype=jnp.bfloat16`` as well, the residual stream between the blocks is bfloat16
too (LayerNorm still computes in float32).

Typical use::

    from fognet_jax import clip_weights
    from fognet_jax.models import clip
    model = clip_weights.load('/path/to/clip-vit-base-patch16')  # HF dir, OpenAI .pt, Orbax
    img = model.encode_image(pixels)      # (N, H, W, 3) CLIP-normalised -> (N, D)
    txt = model.encode_text(token_ids)    # (N, 77) int32 -> (N, D)
    small = clip.create('tiny', image_size=64, seed=0)   # random initialisation
"""

from fognet_jax.models.clip.config import ACTIVATIONS
from fognet_jax.models.clip.config import BATCH_NORM_EPS
from fognet_jax.models.clip.config import CONFIGS
from fognet_jax.models.clip.config import IMAGE_MEAN
from fognet_jax.models.clip.config import IMAGE_STD
from fognet_jax.models.clip.config import LAYER_NORM_EPS
from fognet_jax.models.clip.config import CLIPConfig
from fognet_jax.models.clip.config import canonical_dtype
from fognet_jax.models.clip.config import get_config
from fognet_jax.models.clip.config import quick_gelu
from fognet_jax.models.clip.layers import Linear
from fognet_jax.models.clip.model import CLIP
from fognet_jax.models.clip.model import count_params
from fognet_jax.models.clip.model import create
from fognet_jax.models.clip.multihead import ATTENTION_IMPLS
from fognet_jax.models.clip.multihead import CUDNN_SEQ_MULTIPLE
from fognet_jax.models.clip.multihead import MultiHeadAttention
from fognet_jax.models.clip.multihead import attention
from fognet_jax.models.clip.resnet import ModifiedResNet
from fognet_jax.models.clip.text import TextTransformer
from fognet_jax.models.clip.transformer import MLP
from fognet_jax.models.clip.transformer import ResidualAttentionBlock
from fognet_jax.models.clip.transformer import Transformer
from fognet_jax.models.clip.vit import VisionTransformer
from fognet_jax.models.clip.vit import bicubic_matrix
from fognet_jax.models.clip.vit import interpolate_pos_embed

__all__ = [
  'ACTIVATIONS',
  'attention',
  'ATTENTION_IMPLS',
  'BATCH_NORM_EPS',
  'bicubic_matrix',
  'canonical_dtype',
  'CLIP',
  'CLIPConfig',
  'CONFIGS',
  'count_params',
  'create',
  'CUDNN_SEQ_MULTIPLE',
  'get_config',
  'IMAGE_MEAN',
  'IMAGE_STD',
  'interpolate_pos_embed',
  'LAYER_NORM_EPS',
  'Linear',
  'MLP',
  'ModifiedResNet',
  'MultiHeadAttention',
  'quick_gelu',
  'ResidualAttentionBlock',
  'TextTransformer',
  'Transformer',
  'VisionTransformer',
]
