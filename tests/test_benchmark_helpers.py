"""The benchmark helpers that decide what is measured: the step profile's convolution stand-in, the FLOP rates,
the memory figures and the PyTorch bench's device settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks.step_profile import _stand_in_conv, convolutions_replaced
from experiments.benchmarks.train_step import cpu_kind, cpu_kind_label, direct_gflops, paired_ratios
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


# -- train_step.py: what the accelerator benchmark reads ------------------------------------------
class _Device:
    def __init__(self, stats=None, error=False):
        self.stats, self.error = stats, error

    def memory_stats(self):
        if self.error:
            raise RuntimeError("no allocator statistics")
        return self.stats


def test_xla_flops_reads_the_compiled_programs_cost_and_says_when_it_cannot():
    from experiments.benchmarks.train_step import xla_flops

    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    flops, source = xla_flops(compiled)
    assert flops == pytest.approx(2 * 64 * 32 * 16, rel=0.05) and source == "xla cost_analysis"
    assert xla_flops(object()) == (None, "unavailable (AttributeError)")


def test_device_peak_memory_is_the_allocators_peak_or_none():
    from experiments.benchmarks.train_step import jax_peak_device_mb

    assert jax_peak_device_mb(_Device({"peak_bytes_in_use": 3 * 2**20, "bytes_in_use": 2**20})) == 3.0
    assert jax_peak_device_mb(_Device(None)) is None  # CPU: no allocator statistics
    assert jax_peak_device_mb(_Device(error=True)) is None


def test_torch_device_falls_back_to_cpu_and_refuses_a_missing_gpu():
    torch = pytest.importorskip("torch", reason="choosing torch's device needs torch")
    from experiments.benchmarks.train_step import torch_device

    assert torch_device("cpu") == "cpu"
    assert torch_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="sees no CUDA device"):
            torch_device("cuda")


def test_torch_bench_in_channels_last_and_bfloat16_trains_the_same_model():
    torch = pytest.importorskip("torch", reason="the PyTorch side of the benchmark needs torch")
    from experiments.benchmarks.train_step import TorchBench
    from experiments.support import torch_models

    torch.manual_seed(0)
    state_dict = {k: v.numpy().copy() for k, v in torch_models.create_torch_model("vgg_aib").state_dict().items()}
    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((2, 32, 32, 3)).astype(np.float32), np.array([3, 7])
    losses = {}
    for name, dtype, channels_last in [("plain", "float32", False), ("nhwc", "float32", True),
                                       ("amp", "bfloat16", True)]:
        torch.manual_seed(1)  # the same attention and latent noise
        bench = TorchBench("vgg_aib", dtype, 2, state_dict, images, labels, "cpu", channels_last)
        assert bench.x.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert bench.settings() == {"device": "cpu", "channels_last": channels_last,
                                    "autocast_bfloat16": dtype == "bfloat16"}
        assert bench.peak_device_mb() is None and bench.step_flops > 0
        losses[name] = bench.losses[0]
    assert losses["nhwc"] == pytest.approx(losses["plain"], rel=1e-4)
    assert losses["amp"] == pytest.approx(losses["plain"], rel=5e-2)  # bfloat16 keeps about 3 digits


def _cpuinfo(vendor, family, model, name, flags):
    block = f"processor\t: {{}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n" \
            f"model name\t: {name}\nflags\t\t: {flags}\n"
    return "\n".join(block.format(i) for i in range(2))


def test_cpu_kind_tells_apart_processors_with_the_same_model_name():
    zen5 = cpu_kind(_cpuinfo("AuthenticAMD", 26, 2, "AMD EPYC", "fpu sse2 avx avx2 fma avx512f avx512bw"))
    older = cpu_kind(_cpuinfo("AuthenticAMD", 23, 49, "AMD EPYC", "fpu sse2 avx avx2 fma"))
    xeon = cpu_kind(_cpuinfo("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Processor",
                             "sse2 avx avx2 avx512f amx_bf16 amx_tile"))
    assert zen5 == {"vendor": "AuthenticAMD", "family": "26", "model": "2", "model_name": "AMD EPYC",
                    "isa": "avx512", "amx": False}
    assert (older["isa"], older["family"], older["amx"]) == ("avx2", "23", False)
    assert (xeon["isa"], xeon["amx"]) == ("avx512", True)
    assert cpu_kind_label(zen5) == "AMD EPYC (family 26, model 2, avx512)"
    assert cpu_kind_label(xeon) == "Intel(R) Xeon(R) Processor (family 6, model 143, avx512, amx)"
    assert cpu_kind("") == {"vendor": None, "family": None, "model": None, "model_name": None, "isa": None,
                            "amx": False}


def test_paired_ratios_compare_the_runs_made_side_by_side():
    assert paired_ratios([1.0, 2.0, 4.0], [1.5, 2.0, 2.0]) == [1.5, 1.0, 0.5]  # run times: torch / jax
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
