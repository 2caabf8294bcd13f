"""The benchmark helpers that decide what is measured: the step profile's convolution stand-in, the FLOP rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks.step_profile import _stand_in_conv, convolutions_replaced
from experiments.benchmarks.train_step import direct_gflops
from ib_attention_jax.models import conv as conv_module
from ib_attention_jax.models.conv import conv2d_xla

SHAPES = [(32, 3, 1, 1, 3, 64), (32, 3, 2, 1, 16, 8), (2, 3, 1, 1, 8, 8), (16, 1, 2, 0, 8, 16), (1, 1, 1, 0, 16, 4),
          (32, 7, 2, 3, 3, 8)]


@pytest.mark.parametrize("size,k,stride,pad,cin,cout", SHAPES)
def test_stand_in_has_the_convolutions_output_shape_and_a_kernel_gradient(size, k, stride, pad, cin, cout):
    x = jnp.ones((2, size, size, cin))
    kernel = jnp.full((k, k, cin, cout), 0.5)
    out = _stand_in_conv(x, kernel, stride, pad)
    assert out.shape == conv2d_xla(x, kernel, stride, pad).shape
    assert float(jnp.max(jnp.abs(out))) == 1.0  # values keep their size: no decay into denormals layer by layer
    grad = jax.grad(lambda w: _stand_in_conv(x, w, stride, pad).sum())(kernel)
    assert grad.shape == kernel.shape and np.all(np.asarray(grad) != 0)


def test_convolutions_replaced_restores_the_layer():
    original = conv_module.conv2d
    with convolutions_replaced():
        assert conv_module.conv2d is _stand_in_conv
    assert conv_module.conv2d is original


def test_direct_gflops_rates_jax_by_torchs_flops_per_image():
    rows = {"jax": {"img_per_s": 2.0, "gflops": 70.0}, "torch": {"img_per_s": 1.0, "gflops": 100.0}}
    assert direct_gflops(rows) == pytest.approx(200.0)
    assert direct_gflops({"jax": rows["jax"]}) is None
    assert direct_gflops({**rows, "torch": {"img_per_s": 1.0, "gflops": None}}) is None
