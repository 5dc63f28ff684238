"""Tests of the ASM fog synthesis (tfds_fogact/fog.py)."""

import numpy as np
import pytest

from tfds_fogact import fog


def _clip(t=4, h=24, w=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_homogeneous_asm_matches_independent_formula():
  clip = _clip()
  rng = np.random.default_rng(1)
  depth = rng.uniform(0, 1, (24, 32)).astype(np.float32)
  params = fog.FogParams(beta=2.0, airlight=(0.8, 0.7, 0.9), hetero_strength=0.0)
  out = fog.apply_fog(clip.astype(np.float32) / 255, intensity=params, seed=0, depth=depth)
  # independent per-pixel loop over a few pixels
  for ti, y, x in [(0, 0, 0), (1, 5, 7), (3, 23, 31), (2, 12, 3)]:
    t = np.exp(-2.0 * depth[y, x])
    for ch, a in enumerate((0.8, 0.7, 0.9)):
      expected = clip[ti, y, x, ch] / 255 * t + a * (1 - t)
      assert out[ti, y, x, ch] == pytest.approx(expected, abs=1e-6)


def test_uint8_matches_float_path_and_keeps_dtype_shape():
  clip = _clip()
  u = fog.apply_fog(clip, intensity='dense', seed=3)
  f = fog.apply_fog(clip.astype(np.float64) / 255, intensity='dense', seed=3)
  assert u.dtype == np.uint8 and u.shape == clip.shape
  assert f.dtype == np.float64 and f.shape == clip.shape
  assert np.max(np.abs(u.astype(np.float64) - f * 255)) <= 0.5 + 1e-3
  single = fog.apply_fog(clip[0], intensity='dense', seed=3)
  assert single.shape == clip[0].shape


def test_zero_depth_is_identity_and_far_pixels_approach_airlight():
  clip = _clip().astype(np.float32) / 255
  params = fog.FogParams(beta=50.0, airlight=0.75, hetero_strength=0.0)
  near = fog.apply_fog(clip, intensity=params, seed=0, depth=np.zeros((24, 32)))
  np.testing.assert_allclose(near, clip, atol=1e-6)
  far = fog.apply_fog(clip, intensity=params, seed=0, depth=np.ones((24, 32)))
  np.testing.assert_allclose(far, 0.75, atol=1e-6)


def test_deterministic_for_seed_and_seed_matters():
  clip = _clip()
  a = fog.apply_fog(clip, intensity='light', seed=7)
  b = fog.apply_fog(clip, intensity='light', seed=7)
  c = fog.apply_fog(clip, intensity='light', seed=8)
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c.astype(int)).max() > 0


@pytest.mark.parametrize('name', ['light', 'dense'])
def test_presets_sample_documented_ranges(name):
  preset = fog.PRESETS[name]
  for seed in range(20):
    p = fog.sample_params(name, seed)
    assert preset.beta_range[0] <= p.beta <= preset.beta_range[1]
    a = p.airlight_rgb()
    assert np.all(a >= preset.airlight_range[0] - preset.airlight_tint - 1e-9)
    assert np.all(a <= preset.airlight_range[1] + preset.airlight_tint + 1e-9)


def test_dense_hides_more_than_light():
  shape = (4, 32, 32)
  depth = fog.default_depth(32, 32)
  t_light = np.mean(
    [
      fog.transmission(shape, fog.sample_params('light', s), seed=s, depth=depth).mean()
      for s in range(5)
    ]
  )
  t_dense = np.mean(
    [
      fog.transmission(shape, fog.sample_params('dense', s), seed=s, depth=depth).mean()
      for s in range(5)
    ]
  )
  assert t_dense < 0.6 * t_light


def test_default_depth_prior():
  d = fog.default_depth(40, 10, horizon=0.25, near=0.1)
  assert d.shape == (40, 10)
  assert np.all(d[:10] == 1.0)  # at/above the horizon row
  col = d[:, 0]
  assert np.all(np.diff(col[10:]) <= 0)  # distance decreases toward the bottom
  y_bottom = (40 - 0.5) / 40  # pixel centre of the last row
  assert col[-1] == pytest.approx(0.1 * (1 - 0.25) / (y_bottom - 0.25), rel=1e-5)
  assert d.min() < d.max()  # never constant
  np.testing.assert_array_equal(d[:, 0], d[:, -1])  # rows only


def test_default_depth_is_used_when_no_depth_given():
  clip = _clip(h=40, w=20).astype(np.float32) / 255
  p = fog.FogParams(beta=3.0, airlight=0.8, hetero_strength=0.0)
  a = fog.apply_fog(clip, intensity=p, seed=0)
  b = fog.apply_fog(clip, intensity=p, seed=0, depth=fog.default_depth(40, 20))
  np.testing.assert_allclose(a, b, atol=1e-7)


def test_heterogeneous_fog_is_smooth_and_temporally_coherent():
  n = fog.noise_field(16, 64, 64, seed=0, cells=3.0, drift_per_frame=0.01)
  assert n.std() > 0.3  # not constant
  spatial = np.abs(np.diff(n, axis=2)).mean()  # neighbour pixels
  temporal = np.abs(np.diff(n, axis=0)).mean()  # neighbour frames
  far_apart = np.abs(n[:, :, :32] - n[:, :, 32:]).mean()  # pixels half an image apart
  assert spatial < 0.1 * far_apart
  assert temporal < 0.2 * far_apart  # drifts slowly, no flicker
  assert temporal > 0  # but it does drift
  # modulates beta: heterogeneous transmission differs from homogeneous, same mean order
  p = fog.FogParams(beta=2.0, hetero_strength=0.3)
  th = fog.transmission((4, 32, 32), p, seed=1, depth=np.full((32, 32), 0.5))
  t0 = fog.transmission((4, 32, 32), p, seed=1, depth=np.full((32, 32), 0.5), heterogeneous=False)
  assert th.std() > 0.01 and np.allclose(t0, np.exp(-1.0))


def test_time_varying_depth():
  clip = _clip(t=3).astype(np.float32) / 255
  depth = np.stack([np.zeros((24, 32)), np.full((24, 32), 0.5), np.ones((24, 32))])
  p = fog.FogParams(beta=1.0, airlight=1.0, hetero_strength=0.0)
  out = fog.apply_fog(clip, intensity=p, seed=0, depth=depth)
  np.testing.assert_allclose(out[0], clip[0], atol=1e-6)
  np.testing.assert_allclose(out[1], clip[1] * np.exp(-0.5) + 1 - np.exp(-0.5), atol=1e-6)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(intensity='fog'), 'intensity'),
    (dict(intensity='light', depth=np.zeros((3, 3))), 'shape'),
    (dict(intensity='light', depth=np.full((24, 32), 2.0)), r'\[0, 1\]'),
  ],
)
def test_bad_input_raises_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fog.apply_fog(_clip(), seed=0, **kwargs)


def test_bad_params_and_frames_raise():
  with pytest.raises(ValueError, match='beta'):
    fog.FogParams(beta=-1.0)
  with pytest.raises(ValueError, match='airlight'):
    fog.FogParams(beta=1.0, airlight=1.5)
  with pytest.raises(ValueError, match='frames'):
    fog.apply_fog(np.zeros((2, 4, 4, 4), np.uint8), intensity='light', seed=0)
  with pytest.raises(TypeError, match='seed'):
    fog.apply_fog(_clip(), intensity='light', seed=1.5)
