"""Tokenizer ids equal transformers' CLIPTokenizer on a BPE vocabulary learned in the test."""

import collections
import gzip
import json

import numpy as np
import pytest
import transformers

from fognet_jax import tokenizer as tok

CORPUS = (
  """A video of a person doing push ups. The man is riding a horse in heavy fog!
a photo of a person playing the guitar; she's juggling balls, they're walking the dog.
Kids play basketball at 3 o'clock - swimming, surfing, skiing & skateboarding in the rain.
Fog, mist and haze reduce the visibility: 10 people were running, jumping, climbing...
Ein Mann fährt Fahrrad im Nebel. Un homme fait du vélo dans le brouillard. 自転車に乗る人
"""
  * 3
)

TEXTS = [
  'a video of a person doing push ups',
  'A Photo of  THE man\triding a horse in FOG!!',
  "she's juggling; they'll be running (fast) at 12:45 — ok?",
  'Ein Mann fährt Fahrrad im Nebel, vélo, 自転車に乗る人 🙂',
  'unseen words: xylophone quizzical zebra',
  '',
  '   ',
  'climbing ' * 60,  # longer than the context: truncated
  'e\u0301te\u0301',  # decomposed accents: NFC
]


def _learn_bpe(text, num_merges):
  """Tiny independent BPE learner in CLIP's format (bytes, bytes</w>, merges, specials)."""
  byte_chars = list(tok.bytes_to_unicode().values())
  words = collections.Counter()
  for piece in tok._SPLIT.findall(tok.normalize_text(text)):
    mapped = ''.join(tok.bytes_to_unicode()[b] for b in piece.encode('utf-8'))
    words[tuple(mapped[:-1]) + (mapped[-1] + '</w>',)] += 1
  merges = []
  for _ in range(num_merges):
    pairs = collections.Counter()
    for w, c in words.items():
      for a, b in zip(w, w[1:]):
        pairs[a, b] += c
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    new = collections.Counter()
    for w, c in words.items():
      out, i = [], 0
      while i < len(w):
        if i < len(w) - 1 and (w[i], w[i + 1]) == best:
          out.append(w[i] + w[i + 1])
          i += 2
        else:
          out.append(w[i])
          i += 1
      new[tuple(out)] += c
    words = new
  tokens = byte_chars + [c + '</w>' for c in byte_chars] + [a + b for a, b in merges]
  tokens += ['<|startoftext|>', '<|endoftext|>']
  vocab = {}
  for t in tokens:
    vocab.setdefault(t, len(vocab))
  return vocab, merges


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('bpe')
  vocab, merges = _learn_bpe(CORPUS, 300)
  (d / 'vocab.json').write_text(json.dumps(vocab), encoding='utf-8')
  (d / 'merges.txt').write_text(
    '#version: 0.2\n' + '\n'.join(f'{a} {b}' for a, b in merges) + '\n', encoding='utf-8'
  )
  with gzip.open(d / 'bpe_simple_vocab_16e6.txt.gz', 'wt', encoding='utf-8') as f:
    f.write(
      '"bpe_simple_vocab_16e6.txt#version: 0.2\n' + '\n'.join(f'{a} {b}' for a, b in merges) + '\n'
    )
  ref = transformers.CLIPTokenizer(vocab=vocab, merges=list(merges))
  # transformers 5 silently ignores vocab_file=/merges_file= (2-token vocab): make sure the
  # reference really holds the learned vocabulary.
  assert len(ref.get_vocab()) == len(vocab) and ref.get_vocab() == vocab
  ref.save_pretrained(d / 'hf')
  return dict(dir=d, vocab=vocab, merges=merges, ref=ref)


def _reference_ids(ref, texts, context_length=77):
  enc = ref(texts, padding='max_length', truncation=True, max_length=context_length)
  ids = np.array(enc['input_ids'], np.int32)
  eot = ref.convert_tokens_to_ids('<|endoftext|>')
  # Pad with 0 as OpenAI's clip.tokenize does (HF pads with EOT): zero after the first EOT.
  for row in ids:
    first = int(np.argmax(row == eot))
    row[first + 1 :] = 0
  return ids


@pytest.mark.parametrize('source', ['dir', 'vocab.json', 'tokenizer.json', 'gz', 'hf_dir'])
def test_clip_ids_equal_reference(files, source):
  path = {
    'dir': files['dir'],
    'vocab.json': files['dir'] / 'vocab.json',
    'tokenizer.json': files['dir'] / 'hf' / 'tokenizer.json',
    'gz': files['dir'] / 'bpe_simple_vocab_16e6.txt.gz',
    'hf_dir': files['dir'] / 'hf',
  }
  t = tok.get_tokenizer('clip', str(path[source]))
  got = t(TEXTS)
  want = _reference_ids(files['ref'], TEXTS)
  assert got.dtype == np.int32 and got.shape == (len(TEXTS), 77)
  np.testing.assert_array_equal(got, want)
  assert t.vocab_size == len(files['vocab'])
  # Round trip on text the vocabulary covers.
  assert t.decode(got[0]) == TEXTS[0]


def test_reference_from_pretrained_dir_agrees(files):
  ref = transformers.CLIPTokenizer.from_pretrained(str(files['dir'] / 'hf'))
  assert ref.get_vocab() == files['vocab']
  np.testing.assert_array_equal(
    tok.get_tokenizer('clip', str(files['dir']))(TEXTS), _reference_ids(ref, TEXTS)
  )


def test_special_tokens_truncation_and_context(files):
  t = tok.get_tokenizer('clip', str(files['dir']), context_length=8)
  sot, eot = files['vocab']['<|startoftext|>'], files['vocab']['<|endoftext|>']
  ids = t(['climbing ' * 20, 'a'])
  assert ids.shape == (2, 8)
  assert ids[0, 0] == sot and ids[0, -1] == eot and (ids[0] > 0).all()
  assert ids[1, 0] == sot and ids[1, 2] == eot and (ids[1, 3:] == 0).all()
  # EOT is the largest id of every row (the text tower pools at argmax).
  full = t(TEXTS[:3])
  assert (np.argmax(full, axis=1) == (full == eot).argmax(axis=1)).all()


def test_byte_tokenizer():
  t = tok.get_tokenizer('byte', context_length=10)
  assert t.vocab_size == 259 and t.vocab_size <= 49408
  ids = t(['Hé', 'x' * 50])
  np.testing.assert_array_equal(ids[0], [257, ord('h') + 1, 0xC3 + 1, 0xA9 + 1, 258, 0, 0, 0, 0, 0])
  assert ids[1, 0] == 257 and ids[1, -1] == 258 and (ids[1, 1:-1] == ord('x') + 1).all()
  assert (ids.argmax(1) == (ids == 258).argmax(1)).all()
  assert t.decode(ids[0]) == 'hé'


def test_errors(tmp_path):
  with pytest.raises(ValueError, match='needs path'):
    tok.get_tokenizer('clip')
  with pytest.raises(ValueError, match="'clip' or 'byte'"):
    tok.get_tokenizer('wordpiece')
  with pytest.raises(FileNotFoundError, match='no vocab.json'):
    tok.get_tokenizer('clip', str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no such tokenizer'):
    tok.get_tokenizer('clip', str(tmp_path / 'missing'))
  (tmp_path / 'vocab.json').write_text(json.dumps({'<|startoftext|>': 0, '<|endoftext|>': 1}))
  (tmp_path / 'merges.txt').write_text('#version: 0.2\n')
  with pytest.raises(ValueError, match='not a CLIP byte-level vocabulary'):
    tok.get_tokenizer('clip', str(tmp_path))
