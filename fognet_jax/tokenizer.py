"""Text tokenizers for the CLIP text tower: CLIP's byte-level BPE and a file-free byte one.

``get_tokenizer(kind, path, context_length)`` returns a callable mapping a list of strings
to an ``(N, context_length)`` int32 array: ``[SOT] tokens... [EOT] 0 0 ...``; text longer
than the context is truncated so that EOT stays the last token. The CLIP text tower pools
at the largest id of each row, so EOT is the largest id either tokenizer emits.

* ``kind='clip'``: CLIP's BPE, ids identical to OpenAI's ``simple_tokenizer`` and to
  transformers' ``CLIPTokenizer`` (normalisation: Unicode NFC, whitespace runs -> one space,
  lower case; then CLIP's regex split, byte-to-unicode mapping and merges by rank).
  ``path`` is one of: a checkpoint directory holding ``vocab.json`` + ``merges.txt`` or
  ``tokenizer.json``; a ``tokenizer.json`` file; a ``vocab.json`` file (``merges.txt`` next
  to it); OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.
* ``kind='byte'``: UTF-8 bytes, needs no files (models trained from scratch). Ids: pad 0,
  byte ``b`` -> ``b + 1`` (1..256), SOT 257, EOT 258; ``vocab_size`` 259.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import unicodedata
from typing import Iterable
from typing import Sequence

import numpy as np
import regex

SOT_TOKEN = '<|startoftext|>'
EOT_TOKEN = '<|endoftext|>'
# OpenAI's number of merges in bpe_simple_vocab_16e6.txt.gz used by CLIP (vocab 49408).
_OPENAI_NUM_MERGES = 49152 - 256 - 2

_SPLIT = regex.compile(
  r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
  r"""[^\s\p{L}\p{N}]+""",
  regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r'\s+')


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode chars."""
  keep = (
    list(range(ord('!'), ord('~') + 1))
    + list(range(ord('¡'), ord('¬') + 1))
    + list(range(ord('®'), ord('ÿ') + 1))
  )
  chars = list(keep)
  n = 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + n)
      n += 1
  return dict(zip(keep, (chr(c) for c in chars)))


def normalize_text(text: str) -> str:
  """NFC, collapse whitespace runs to one space, strip, lower case."""
  text = unicodedata.normalize('NFC', text)
  return _WHITESPACE.sub(' ', text).strip().lower()


def _pad_rows(rows: Sequence[Sequence[int]], sot: int, eot: int, context_length: int) -> np.ndarray:
  """[SOT] + ids + [EOT], truncated (EOT kept last), zero padded -> (N, context_length)."""
  out = np.zeros((len(rows), context_length), np.int32)
  for i, ids in enumerate(rows):
    seq = [sot] + list(ids)[: context_length - 2] + [eot]
    out[i, : len(seq)] = seq
  return out


def _as_list(texts: str | Iterable[str]) -> list[str]:
  if isinstance(texts, str):
    return [texts]
  texts = list(texts)
  bad = [t for t in texts if not isinstance(t, str)]
  if bad:
    raise TypeError(f'tokenizer expects strings, got {type(bad[0]).__name__}')
  return texts


class ClipTokenizer:
  """CLIP's byte-level BPE tokenizer (pure Python; ids equal OpenAI's and transformers').

  Args:
    vocab: token string -> id (must contain ``<|startoftext|>`` and ``<|endoftext|>``).
    merges: BPE merges as (left, right) pairs, highest priority first.
    context_length: output row length.
  """

  def __init__(
    self,
    vocab: dict[str, int],
    merges: Sequence[tuple[str, str]],
    context_length: int = 77,
    source: str = '<memory>',
  ):
    for special in (SOT_TOKEN, EOT_TOKEN):
      if special not in vocab:
        raise ValueError(f'{source}: vocabulary has no {special} token')
    if context_length < 2:
      raise ValueError(f'context_length must be >= 2, got {context_length}')
    byte_chars = bytes_to_unicode().values()
    absent = [c for c in byte_chars if c + '</w>' not in vocab or c not in vocab]
    if absent:
      raise ValueError(
        f'{source}: not a CLIP byte-level vocabulary (missing byte tokens such as {absent[0]!r})'
      )
    self.encoder = dict(vocab)
    self.decoder = {v: k for k, v in self.encoder.items()}
    self.bpe_ranks = {tuple(m): i for i, m in enumerate(merges)}
    self.byte_encoder = bytes_to_unicode()
    self.context_length = context_length
    self.sot = self.encoder[SOT_TOKEN]
    self.eot = self.encoder[EOT_TOKEN]
    self.vocab_size = max(self.encoder.values()) + 1
    self._cache = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}

  def bpe(self, token: str) -> list[str]:
    """Applies the merges by rank to one pre-token (already byte-to-unicode mapped)."""
    if token in self._cache:
      return self._cache[token].split(' ')
    word = list(token[:-1]) + [token[-1] + '</w>']
    while len(word) > 1:
      pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
      best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float('inf')))
      if best not in self.bpe_ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    if len(self._cache) < 100_000:
      self._cache[token] = ' '.join(word)
    return word

  def encode(self, text: str) -> list[int]:
    """Token ids of one string, without SOT/EOT."""
    ids = []
    for piece in _SPLIT.findall(normalize_text(text)):
      if piece in (SOT_TOKEN, EOT_TOKEN):
        ids.append(self.encoder[piece])
        continue
      mapped = ''.join(self.byte_encoder[b] for b in piece.encode('utf-8'))
      ids.extend(self.encoder[t] for t in self.bpe(mapped))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Inverse of :meth:`encode` up to normalisation (padding and specials dropped)."""
    byte_decoder = {v: k for k, v in self.byte_encoder.items()}
    text = ''.join(
      self.decoder[int(i)]
      for i in ids
      if int(i) not in (0, self.sot, self.eot) and int(i) in self.decoder
    )
    words = [
      bytes(byte_decoder[c] for c in w).decode('utf-8', errors='replace')
      for w in text.split('</w>')
    ]
    return ' '.join(words).strip()

  def __call__(self, texts: str | Iterable[str]) -> np.ndarray:
    """list[str] -> (N, context_length) int32."""
    return _pad_rows(
      [self.encode(t) for t in _as_list(texts)], self.sot, self.eot, self.context_length
    )


class ByteTokenizer:
  """UTF-8 byte tokenizer needing no files: pad 0, bytes 1..256, SOT 257, EOT 258."""

  PAD, SOT, EOT = 0, 257, 258
  vocab_size = 259

  def __init__(self, context_length: int = 77):
    if context_length < 2:
      raise ValueError(f'context_length must be >= 2, got {context_length}')
    self.context_length = context_length
    self.sot, self.eot = self.SOT, self.EOT

  def encode(self, text: str) -> list[int]:
    return [b + 1 for b in normalize_text(text).encode('utf-8')]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(int(i) - 1 for i in ids if 1 <= int(i) <= 256)
    return data.decode('utf-8', errors='replace')

  def __call__(self, texts: str | Iterable[str]) -> np.ndarray:
    return _pad_rows(
      [self.encode(t) for t in _as_list(texts)], self.SOT, self.EOT, self.context_length
    )


# --------------------------------------------------------------------------------------
# Reading vocabularies.
# --------------------------------------------------------------------------------------


def _parse_merges(lines: Iterable[str], source: str) -> list[tuple[str, str]]:
  merges = []
  for n, line in enumerate(lines):
    line = line.rstrip('\n')
    if not line or (n == 0 and line.startswith('#version')):
      continue
    parts = line.split(' ')
    if len(parts) != 2:
      raise ValueError(f'{source}: line {n + 1} is not a merge "A B": {line!r}')
    merges.append((parts[0], parts[1]))
  return merges


def load_vocab_merges(vocab_path: str, merges_path: str):
  """Reads transformers-style ``vocab.json`` + ``merges.txt``."""
  try:
    with open(vocab_path, encoding='utf-8') as f:
      vocab = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{vocab_path}: cannot read the vocabulary: {e}') from e
  if not isinstance(vocab, dict):
    raise ValueError(f'{vocab_path}: expected a JSON object token -> id')
  with open(merges_path, encoding='utf-8') as f:
    merges = _parse_merges(f, merges_path)
  return vocab, merges


def load_tokenizer_json(path: str):
  """Reads vocab and merges from a ``tokenizers`` ``tokenizer.json`` (BPE model)."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: cannot read tokenizer.json: {e}') from e
  model = data.get('model') or {}
  if model.get('type') != 'BPE' or 'vocab' not in model or 'merges' not in model:
    raise ValueError(f'{path}: not a BPE tokenizer.json (model.type={model.get("type")!r})')
  vocab = dict(model['vocab'])
  for added in data.get('added_tokens', []):
    vocab.setdefault(added['content'], added['id'])
  merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in model['merges']]
  return vocab, merges


def load_openai_bpe(path: str):
  """Builds vocab and merges from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``."""
  try:
    with gzip.open(path, 'rt', encoding='utf-8') as f:
      lines = f.read().split('\n')
  except (OSError, EOFError) as e:
    raise ValueError(f'{path}: cannot read the gzipped BPE merges: {e}') from e
  merges = _parse_merges(lines[1 : _OPENAI_NUM_MERGES + 1], path)
  byte_chars = list(bytes_to_unicode().values())
  tokens = byte_chars + [c + '</w>' for c in byte_chars] + [a + b for a, b in merges]
  tokens += [SOT_TOKEN, EOT_TOKEN]
  return {t: i for i, t in enumerate(tokens)}, merges


def load_clip_tokenizer(path: str, context_length: int = 77) -> ClipTokenizer:
  """A :class:`ClipTokenizer` from a directory or file (see the module docstring)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    vocab_json, merges_txt = os.path.join(path, 'vocab.json'), os.path.join(path, 'merges.txt')
    tok_json = os.path.join(path, 'tokenizer.json')
    gz = os.path.join(path, 'bpe_simple_vocab_16e6.txt.gz')
    if os.path.exists(vocab_json) and os.path.exists(merges_txt):
      vocab, merges = load_vocab_merges(vocab_json, merges_txt)
    elif os.path.exists(tok_json):
      vocab, merges = load_tokenizer_json(tok_json)
    elif os.path.exists(gz):
      vocab, merges = load_openai_bpe(gz)
    else:
      raise FileNotFoundError(
        f'{path}: no vocab.json + merges.txt, tokenizer.json or '
        'bpe_simple_vocab_16e6.txt.gz in this directory'
      )
  elif os.path.isfile(path):
    name = os.path.basename(path)
    if name.endswith('.gz'):
      vocab, merges = load_openai_bpe(path)
    elif name == 'vocab.json':
      merges_txt = os.path.join(os.path.dirname(path), 'merges.txt')
      if not os.path.exists(merges_txt):
        raise FileNotFoundError(f'{path}: no merges.txt next to it')
      vocab, merges = load_vocab_merges(path, merges_txt)
    elif name.endswith('.json'):
      vocab, merges = load_tokenizer_json(path)
    else:
      raise ValueError(
        f'{path}: unknown tokenizer file (expected a directory, '
        'tokenizer.json, vocab.json or bpe_simple_vocab_16e6.txt.gz)'
      )
  else:
    raise FileNotFoundError(f'{path}: no such tokenizer file or directory')
  return ClipTokenizer(vocab, merges, context_length=context_length, source=path)


def get_tokenizer(kind: str = 'clip', path: str | None = None, context_length: int = 77):
  """Returns a tokenizer: ``kind`` 'clip' (BPE files at ``path``) or 'byte' (no files).

  Raises:
    ValueError: unknown kind, or 'clip' without a path.
    FileNotFoundError: ``path`` holds no tokenizer files.
  """
  if kind == 'byte':
    return ByteTokenizer(context_length)
  if kind == 'clip':
    if not path:
      raise ValueError(
        "tokenizer kind 'clip' needs path= (a checkpoint directory with "
        "vocab.json + merges.txt or tokenizer.json, or OpenAI's "
        "bpe_simple_vocab_16e6.txt.gz); use kind='byte' when no files exist"
      )
    return load_clip_tokenizer(path, context_length)
  raise ValueError(f"tokenizer kind must be 'clip' or 'byte', got {kind!r}")
