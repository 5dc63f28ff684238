"""Every TFDS builder names the paper: a real homepage and a BibTeX citation of "Seeing Through
Fog: Towards Fog-Invariant Action Recognition"; README.md opens with the same citation."""

import os
import re

import pytest
import tensorflow_datasets as tfds

import tfds_fogact  # noqa: F401  (registers the builders)
from tfds_fogact import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = 'Seeing Through Fog: Towards Fog-Invariant Action Recognition'
BUILDERS = ('synthetic_fog_act', 'fogact', 'ucf101_fog', 'hmdb51_fog', 'kinetics100_fog')
PLACEHOLDERS = ('', 'https://github.com/fognet_jax', 'https://github.com/OWNER')


def bibtex_entries(text: str) -> list:
  """(type, key, {field: value}) of each `@type{key, field = {value}, ...}` entry of `text`;
  fails on unbalanced braces."""
  entries = []
  for m in re.finditer(r'@(\w+)\{([^,\s]+),', text):
    depth, i = 1, m.end()
    while depth:
      assert i < len(text), f'unbalanced braces in the entry {m.group(2)}'
      depth += {'{': 1, '}': -1}.get(text[i], 0)
      i += 1
    body = text[m.end() : i - 1]
    fields = {
      k.lower(): ' '.join(v.split())
      for k, v in re.findall(r'(\w+)\s*=\s*\{((?:[^{}]|\{[^{}]*\})*)\}', body)
    }
    entries.append((m.group(1).lower(), m.group(2), fields))
  return entries


def test_the_citation_is_bibtex_of_the_paper():
  entries = bibtex_entries(common.CITATION)
  assert len(entries) == 1
  kind, _, fields = entries[0]
  assert kind in ('misc', 'article', 'inproceedings')
  assert fields['title'] == TITLE
  # the authors as the paper lists them
  assert fields['author'] == 'Liu, Enqi and Pan, Liyuan and Gao, Zhi and Li, Lingzhi and Li, Qing'
  assert re.fullmatch(r'20\d\d', fields['year'])
  assert common.HOMEPAGE.startswith('https://') and common.HOMEPAGE not in PLACEHOLDERS


@pytest.mark.parametrize('name', BUILDERS)
def test_builder_info_has_homepage_and_citation(name, tmp_path):
  info = tfds.builder(name, data_dir=os.fspath(tmp_path)).info
  assert info.homepage not in PLACEHOLDERS and info.homepage.startswith('https://')
  assert 'tensorflow.org/datasets/catalog' not in info.homepage  # TFDS's default: no such page
  entries = bibtex_entries(info.citation)
  assert entries and entries[0][2]['title'] == TITLE, info.citation
  assert info.homepage == common.HOMEPAGE and info.citation.startswith(common.CITATION)
  if name.endswith('_fog'):  # the fogged public datasets also cite their source dataset
    assert len(entries) == 2, info.citation
    source = {'ucf101_fog': 'UCF101', 'hmdb51_fog': 'HMDB', 'kinetics100_fog': 'Kinetics'}[name]
    assert source in entries[1][2]['title'], entries[1]


def test_readme_opens_with_the_citation():
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  head = '\n'.join(text.splitlines()[:60])
  assert '## Citation' in head
  block = re.search(r'```bibtex\n(.*?)\n```', head, re.S)
  assert block and [e[2]['title'] for e in bibtex_entries(block.group(1))] == [TITLE]
  assert block.group(1) == common.CITATION and common.HOMEPAGE in head
