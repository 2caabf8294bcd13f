"""The CPU convolution forms' written-out gradients: exact, and lean in memory (the backward keeps the input only)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ib_attention_jax.models import winograd
from ib_attention_jax.models.conv import _slices_forward, conv2d_slices, conv2d_xla
from ib_attention_jax.models.winograd import after, conv2d_winograd

TOL = 1e-5  # relative to max |reference|, as in test_conv.py


def _rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.max(np.abs(ours - ref)) / np.max(np.abs(ref))


def _chain_grad(conv, kernels):
    """Gradients of a chain of convolutions with ReLUs: the backward pass needs every layer's saved values."""

    def loss(x, kernels):
        for k in kernels:
            x = jax.nn.relu(conv(x, k))
        return jnp.sum(x * x)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _temp_bytes(fn, *args):
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_after_is_the_identity_and_keeps_dtype():
    x = jnp.arange(6.0, dtype=jnp.bfloat16).reshape(2, 3)
    dy = jnp.full((1, 2, 2, 1), 3.0, jnp.float32)
    out = jax.jit(after)(x, dy)
    assert out.dtype == x.dtype and np.array_equal(np.asarray(out), np.asarray(x))


@pytest.mark.parametrize("form", ["winograd", "slices"])
def test_written_out_gradients_hold_less_memory_than_autodiff(form):
    """XLA's buffer assignment of the same chain: the custom VJP's temporaries against differentiating the forward.

    Autodiff keeps each layer's 4x (Winograd tiles) or 9x (patch matrix) larger intermediate
    for the backward pass; the written-out gradients keep only the layer inputs.
    """
    rng = np.random.default_rng(0)
    shape, layers, limit = ((2, 16, 16, 32), 3, 0.8) if form == "winograd" else ((2, 32, 32, 8), 6, 0.9)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    c = shape[-1]
    kernels = [jnp.asarray(rng.standard_normal((3, 3, c, c)) / (3 * c**0.5), jnp.float32) for _ in range(layers)]
    if form == "winograd":
        lean_fn = lambda x, k: conv2d_winograd(x, k)  # noqa: E731
        plain_fn = lambda x, k: winograd._forward(x, k, ((1, 1), (1, 1)))  # noqa: E731
    else:
        lean_fn = lambda x, k: conv2d_slices(x, k, 1, 1)  # noqa: E731
        plain_fn = lambda x, k: _slices_forward(x, k, 1, ((1, 1), (1, 1)))  # noqa: E731
    lean_grad, plain_grad = _chain_grad(lean_fn, kernels), _chain_grad(plain_fn, kernels)
    assert _temp_bytes(lean_grad, x, kernels) < limit * _temp_bytes(plain_grad, x, kernels)
    for a, b in zip(jax.tree.leaves(lean_grad(x, kernels)), jax.tree.leaves(plain_grad(x, kernels)), strict=True):
        assert _rel_err(a, b) <= TOL


def test_batch_chunk_is_the_largest_divisor_of_the_batch_within_the_budget():
    pads = ((1, 1), (1, 1))
    per_image = 16 * 4 * 5 * 6 * 4  # a 7x9 map: 4x5 tiles of max(cin=5, cout=6) float32 values
    assert winograd.batch_chunk((8, 7, 9, 5), 6, pads, 3 * per_image) == 2
    assert winograd.batch_chunk((6, 7, 9, 5), 6, pads, 3 * per_image) == 3  # any divisor, not only powers of two
    assert winograd.batch_chunk((6, 7, 9, 5), 6, pads, 10 * per_image) == 6
    assert winograd.batch_chunk((6, 7, 9, 5), 6, pads, per_image // 2) == 1  # one image, however large
    assert winograd.batch_chunk((8, 7, 9, 5), 6, pads, 3 * per_image, jnp.bfloat16) == 4  # half the bytes per value


def test_winograd_in_batch_chunks_matches_xla(monkeypatch):
    """Forward (a loop over chunks) and backward (unrolled chunks) in chunks: the same values and gradients."""
    per_image = 16 * 4 * 5 * 6 * 4
    monkeypatch.setattr(winograd, "FORWARD_CHUNK_BYTES", 2 * per_image)  # 4 chunks of 2
    monkeypatch.setattr(winograd, "BACKWARD_CHUNK_BYTES", 3 * per_image)  # 3 chunks of 3 (batch 9)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((9, 7, 9, 5)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 6)) / 7, jnp.float32)

    def grads(fn):
        out, vjp = jax.vjp(fn, x, kernel)
        return (out, *vjp(jnp.sin(out)))

    ref = jax.jit(lambda: grads(lambda x, k: conv2d_xla(x, k, 1, 1)))()
    ours = jax.jit(lambda: grads(lambda x, k: conv2d_winograd(x, k)))()
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and _rel_err(a, b) <= TOL


def test_winograd_in_batch_chunks_holds_less_memory(monkeypatch):
    """XLA's temporaries of a chain's gradient: chunked passes against whole-batch passes."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((8, 16, 16, 32)), jnp.float32)
    kernels = [jnp.asarray(rng.standard_normal((3, 3, 32, 32)) / 50, jnp.float32) for _ in range(3)]
    per_image = 16 * 8 * 8 * 32 * 4

    def temp_bytes(budget):
        monkeypatch.setattr(winograd, "FORWARD_CHUNK_BYTES", budget)
        monkeypatch.setattr(winograd, "BACKWARD_CHUNK_BYTES", budget)
        grad = _chain_grad(lambda x, k: conv2d_winograd(x, k), kernels)
        return _temp_bytes(grad, x, kernels), grad(x, kernels)

    whole, whole_grads = temp_bytes(2**40)
    chunked, chunked_grads = temp_bytes(2 * per_image)
    assert chunked < 0.8 * whole
    for a, b in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(whole_grads), strict=True):
        assert _rel_err(a, b) <= TOL


def test_slices_gradient_with_asymmetric_padding_and_stride_matches_xla():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
    pads = ((0, 1), (1, 0))

    def grads(fn):
        out, vjp = jax.vjp(fn, x, kernel)
        return (out, *vjp(jnp.cos(out)))

    ref = jax.jit(lambda: grads(lambda x, k: conv2d_xla(x, k, 2, pads)))()
    ours = jax.jit(lambda: grads(lambda x, k: conv2d_slices(x, k, 2, pads)))()
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and _rel_err(a, b) <= TOL
