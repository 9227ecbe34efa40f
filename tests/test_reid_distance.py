"""mtl.reid.distance against direct formulas."""

import numpy as np
import pytest

import mtl.reid.distance as distance_module
from mtl.reid import (
    attribute_distance,
    combine_multiplicative,
    combine_weighted,
    cosine_distance,
    euclidean_distance,
)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.standard_normal((23, 16)), rng.standard_normal((31, 16))


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def chunked(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(distance_module, "_CHUNK_ELEMENTS", 31 * 4)  # 4 rows per chunk
    return request.param


def test_euclidean(feats, chunked):
    a, b = feats
    expected = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    out = euclidean_distance(a, b)
    assert out.dtype == np.float32 and out.shape == (23, 31)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(euclidean_distance(a, b, squared=True), expected**2, rtol=1e-5, atol=1e-4)


def test_euclidean_self_distance_is_near_zero():
    a = np.random.default_rng(1).standard_normal((5, 8))
    d = euclidean_distance(a, a, squared=True)
    assert np.all(d >= 0)
    assert np.abs(np.diag(d)).max() < 1e-4


def test_cosine(feats, chunked):
    a, b = feats
    cos = (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None, :]
    out = cosine_distance(a, b)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 1 - cos, atol=1e-6)
    # Scale-invariant; a zero vector is at distance 1 from everything.
    np.testing.assert_allclose(cosine_distance(3 * a, b), out, atol=1e-6)
    np.testing.assert_allclose(cosine_distance(np.zeros((1, 16)), b), np.ones((1, 31)))


def test_attribute_distance(chunked):
    rng = np.random.default_rng(2)
    q, g = rng.random((23, 7)), rng.random((31, 7))
    expected = np.abs(q[:, None, :] - g[None, :, :]).sum(-1) / 7
    out = attribute_distance(q, g)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Identical -> 0; certain and opposite on every attribute -> 1.
    assert attribute_distance([[1, 0, 1]], [[1, 0, 1], [0, 1, 0]]).tolist() == [[0.0, 1.0]]


def test_combinations():
    d_feat = np.array([[1.0, 2.0], [3.0, 4.0]])
    d_attr = np.array([[0.0, 0.5], [1.0, 0.25]])
    np.testing.assert_allclose(combine_weighted(d_feat, d_attr, 2.0), d_feat + 2.0 * d_attr)
    np.testing.assert_allclose(combine_weighted(d_feat, d_attr, 0.0), d_feat)
    np.testing.assert_allclose(combine_multiplicative(d_feat, d_attr, 0.5), d_feat * (0.5 + d_attr))
    assert combine_weighted(d_feat, d_attr, 1).dtype == np.float32
    assert combine_multiplicative(d_feat, d_attr, 1).dtype == np.float32


def test_errors():
    with pytest.raises(ValueError, match="different dimensions"):
        euclidean_distance(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        cosine_distance(np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="different shapes"):
        combine_weighted(np.zeros((2, 3)), np.zeros((3, 2)), 1.0)
    with pytest.raises(ValueError, match="weight"):
        combine_weighted(np.zeros((2, 3)), np.zeros((2, 3)), -1.0)
    with pytest.raises(ValueError, match="alpha"):
        combine_multiplicative(np.zeros((2, 3)), np.zeros((2, 3)), -1.0)
