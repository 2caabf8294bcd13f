"""Train-step throughput: our jitted JAX step against the PyTorch reference module, in one process.

    make torch        # once: CPU PyTorch 2.13.0 (or .venv/bin/pip install -r requirements-torch.txt)
    .venv/bin/python -m experiments.benchmarks.train_step --model vgg_aib --batch 32
    .venv/bin/python -m experiments.benchmarks.train_step --model wrn_aib --batch 32 --steps 3 --repeats 3
    .venv/bin/python -m experiments.benchmarks.train_step --model vgg_aib --batch 32 --no-torch
    python -m experiments.benchmarks.train_step --model wrn_aib --batch 128 --dtype bfloat16 --torch-channels-last

Both sides train the same model from the same weights (the JAX init, exported with
``interop.to_state_dict`` and loaded into ``experiments.support.torch_models`` with strict=True)
on one fixed random batch (no input pipeline), with the official CIFAR recipe: SGD
lr 0.01, momentum 0.9, weight decay 5e-4 (coupled, as torch.optim.SGD), the official
loss (CE/ln2 + beta*c*KL/ln2 (+ 0.4 vq + 0.1 commit)), num_sample 1, train mode.

JAX: the training loop's ``build_model`` (``half_precision`` for ``--dtype bfloat16``: bfloat16
compute, float32 parameters), ``make_train_step`` with
``official_objective(name)``, run by ``Runner('shard_map', jax.devices()[:1])``. The
compile time is lower + compile of that step; the step's FLOPs come from XLA's
``cost_analysis()['flops']`` (its count includes elementwise work); the torch step's
FLOPs from ``torch.utils.flop_counter`` (convolutions and matmuls only), counted
on its first warm-up step. On CPU, Winograd convolutions execute fewer FLOPs than
the model's direct convolutions, so ``jax_gflops`` (executed FLOPs per second) can fall
while the step gets faster; ``jax_direct_gflops`` rates the JAX step at torch's count
of the same model's FLOPs, when torch ran.

Timing: after warm-up, ``--repeats`` timed runs of ``--steps`` steps per framework,
interleaved (jax, torch, jax, torch, ...) so both see the same machine load; images/s
is the median over runs, ``ratio`` the ratio of the medians and ``ratio_runs`` the ratio of
each interleaved pair (steadier where the machine's speed drifts between runs). The JSON
names the processor by its model name and, as ``host_cpu_kind``, its family, model and vector
extension, which the CPU figures depend on. ``--threads N`` gives torch N threads (``torch.set_num_threads``)
and, when N is below the CPUs this process may use, pins the whole process to N CPUs
(``sched_setaffinity``), which is what bounds XLA's CPU thread pool: XLA's
``--xla_cpu_multi_thread_eigen`` flag did not change a 2-thread matmul's speed on
jax 0.10, pinning did. Memory: the process's peak RSS; per framework, how far the
peak RSS rose above the process's RSS before that framework's setup (JAX: init,
compile, first step, measured before torch allocates anything; torch: model, first
step and warm-up, measured by resetting the kernel's high-water mark VmHWM; before each
framework's phase and after the JAX compile the C heap's free pages go back to the kernel,
``malloc_trim``, and the JAX side holds the model's variables once, in its train state), with
the JAX process's RSS after building the state, after compiling and after the first step; XLA's
buffer sizes of the compiled step (``memory_analysis()``) and ``memory_stats()`` of the
JAX device where the backend has them (not on CPU).

On a GPU (``--torch-device auto`` puts torch on CUDA when it sees one) the timed runs
synchronise the device before the clock is read, torch runs with ``cudnn.benchmark``
(fixed shapes: it picks the fastest convolution algorithms, as XLA's autotuner does)
and, with ``--torch-channels-last``, NHWC tensors (what AMP users run); ``--dtype
bfloat16`` is ``torch.autocast`` there. JAX does not preallocate the GPU's memory
(``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set), so both fit; device memory is
``peak_bytes_in_use`` of the JAX device and ``torch.cuda.max_memory_allocated``.

Run as a program it restarts itself with transparent huge pages for ``malloc``
(``ib_attention_jax.cpu_memory``; both frameworks allocate through it), unless
``IB_ATTENTION_NO_HUGE_PAGES=1``; the JSON line records ``GLIBC_TUNABLES`` and ``LD_PRELOAD``
(a preloaded caching ``malloc`` such as tcmalloc speeds both frameworks up, see
``docs/performance.md``; it also keeps the memory one framework frees for the other, so
under one the torch side's extra-memory figure is not meaningful).

Prints a table and, last, one JSON line with the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np

AIB_MODELS = ("vgg_aib", "vgg_aib_qt", "wrn_aib", "wrn_aib_qt")
PLAIN_MODELS = ("vgg_plain", "wrn_plain")
NUM_CLASSES = 10
RECIPE = {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


# -- process measurements ------------------------------------------------------------------------
def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Resident set size now (MiB)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float:
    """The process's peak resident set size since start (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Resets the kernel's high-water mark VmHWM (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def phase_peak_mb() -> float | None:
    """VmHWM: the peak RSS since the last :func:`reset_peak_rss` (MiB)."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024


def release_free_heap() -> bool:
    """Hands the C heap's free pages back to the kernel (glibc ``malloc_trim(0)``); False where there is no glibc.

    XLA's compiler frees gigabytes of scratch memory that glibc keeps mapped in its heaps;
    the compiled step then allocates its buffers with fresh ``mmap`` calls next to it, so
    the process's peak RSS is the compiler's leftovers plus the step's buffers. Trimming
    after compiling lets the step's buffers take those pages instead.
    """
    if sys.platform != "linux":
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``; where there is none, what ``platform`` says)."""
    return _model_name(cpu_kind())


def _model_name(kind: dict[str, Any] | None) -> str:
    return (kind and kind["model_name"]) or platform.processor() or platform.machine()


def cpu_kind(cpuinfo: str | None = None) -> dict[str, Any] | None:
    """The processor's kind from ``/proc/cpuinfo`` (its first CPU): vendor, family, model and vector ISA.

    The model name alone does not tell processors apart that the CPU figures depend on
    (virtual machines report "AMD EPYC" for AVX2 and AVX-512 generations alike), so the JSON
    records the widest vector extension (``avx512``, ``avx2``, ``avx``, ``sse``) and AMX.
    None where there is no ``/proc/cpuinfo`` (not Linux).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first CPU's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    isa = next((name for name, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse", "sse2"))
                if flag in flags), None)
    return {"vendor": fields.get("vendor_id"), "family": fields.get("cpu family"), "model": fields.get("model"),
            "model_name": fields.get("model name"), "isa": isa, "amx": "amx_tile" in flags}


def cpu_kind_label(kind: dict[str, Any] | None) -> str:
    """``"AMD EPYC (family 26, model 2, avx512)"``: the model name with what tells the kinds apart."""
    name = _model_name(kind)
    if kind is None:
        return name
    parts = [f"family {kind['family']}" if kind["family"] else None,
             f"model {kind['model']}" if kind["model"] else None, kind["isa"], "amx" if kind["amx"] else None]
    extras = ", ".join(p for p in parts if p)
    return f"{name} ({extras})" if extras else name


def xla_flops(compiled: Any) -> tuple[float | None, str]:
    """FLOPs of a compiled XLA program by its ``cost_analysis()`` and where the number came from."""
    try:
        cost = compiled.cost_analysis()
    except Exception as err:
        return None, f"unavailable ({type(err).__name__})"
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return (float(flops), "xla cost_analysis") if flops else (None, "unavailable (no 'flops' key)")


def xla_buffers_mb(compiled: Any) -> dict[str, float] | None:
    """XLA's buffer sizes of a compiled program (MiB): arguments, outputs, temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    return {f.replace("_size_in_bytes", "_mb"): round(getattr(m, f) / 2**20, 1) for f in fields if hasattr(m, f)}


def jax_memory_stats(device: Any) -> dict[str, Any] | None:
    """The device allocator's statistics (GPU, TPU); None where the backend keeps none (CPU)."""
    try:
        return device.memory_stats()
    except Exception:
        return None


def jax_peak_device_mb(device: Any) -> float | None:
    """The most device memory this process's JAX allocator has held since it started (MiB)."""
    peak = (jax_memory_stats(device) or {}).get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**20, 1)


def device_name(device: Any) -> str:
    """``platform: model`` of a JAX device (the processor's name on CPU)."""
    return f"{device.platform}: {cpu_kind_label(cpu_kind()) if device.platform == 'cpu' else device.device_kind}"


def versions(with_torch: bool) -> dict[str, str]:
    """Python, jax, jaxlib (and torch) versions."""
    import jax

    out = {"jax": jax.__version__, "python": sys.version.split()[0]}
    try:
        import jaxlib

        out["jaxlib"] = jaxlib.__version__
    except ImportError:
        pass
    if with_torch:
        import torch

        out["torch"] = torch.__version__
    return out


def limit_cpus(threads: int) -> list[int]:
    """Pins the process to ``threads`` CPUs when it may use more; returns the CPUs it runs on."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads < len(allowed):
        os.sched_setaffinity(0, set(allowed[:threads]))
    return sorted(os.sched_getaffinity(0))


# -- one framework ---------------------------------------------------------------------------------
class Bench:
    """A framework's train step on a fixed batch: ``run(steps)`` returns the seconds taken."""

    name: str
    step_flops: float | None = None
    flops_source: str = ""
    setup: dict[str, float]
    runs: list[float]
    losses: list[float]
    peak_added_mb: float | None = None  # peak RSS over the process before this framework was set up

    def run(self, steps: int) -> float:
        raise NotImplementedError


class JaxBench(Bench):
    """Our jitted train step under ``Runner('shard_map', jax.devices()[:1])``."""

    def __init__(self, model_name: str, batch: int, dtype: str, conv_impl: str, seed: int,
                 images: np.ndarray, labels: np.ndarray) -> None:
        import jax
        import jax.numpy as jnp
        import ml_collections

        from ib_attention_jax.objectives import official_objective
        from ib_attention_jax.runtime.parallel import Runner, host_batch_index, train_feed
        from ib_attention_jax.training.loop import build_model
        from ib_attention_jax.training.optimizers import OptimizerConfig, make_optimizer
        from ib_attention_jax.training.state import TrainState
        from ib_attention_jax.training.step import StepConfig, make_train_step

        self.name, self.setup, self.runs, self.losses = "jax", {}, [], []
        self._jax = jax
        config = ml_collections.ConfigDict({"model": model_name, "model_kwargs": {"conv_impl": conv_impl},
                                            "half_precision": dtype == "bfloat16"})
        self.model = build_model(config, NUM_CLASSES, axis_name="data")  # the training loop's model
        init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
        t = time.perf_counter()
        self._init = jax.jit(lambda k: self.model.init(k, jnp.zeros((1, 32, 32, 3)), deterministic=True))
        self._init_key = init_key
        variables = self.initial_variables()
        self.setup["init_s"] = time.perf_counter() - t
        tx, _ = make_optimizer(OptimizerConfig(name="sgd", **RECIPE), steps_per_epoch=1000, total_steps=10**6)
        runner = Runner("shard_map", jax.devices()[:1])
        self.state = runner.replicate(TrainState.create(variables, tx, state_key))
        del variables  # the state holds its own copy; the torch export calls initial_variables() again
        release_free_heap()
        self.setup["rss_with_state_mb"] = rss_mb()
        step = runner.compile_train_step(make_train_step(self.model, tx, StepConfig(objective=official_objective(
            model_name))))
        self.batch = runner.shard_batch(train_feed(images, labels, host_batch_index(batch)))
        t = time.perf_counter()
        self.step = step.lower(self.state, self.batch).compile()  # the Runner's jit, compiled once
        self.setup["compile_s"] = time.perf_counter() - t
        self.step_flops, self.flops_source = xla_flops(self.step)
        release_free_heap()  # the compiler's freed scratch memory, before the step allocates its buffers
        self.setup["rss_compiled_mb"] = rss_mb()
        t = time.perf_counter()
        self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready(self.state)
        self.setup["first_step_s"] = time.perf_counter() - t
        self.setup["rss_after_first_step_mb"] = rss_mb()
        self.losses.append(float(metrics["total"]))

    def initial_variables(self) -> Any:
        """The model's initial variables (the same every call: a fixed key), e.g. to export them to torch."""
        variables = self._init(self._init_key)
        return self._jax.block_until_ready(variables)

    def memory_analysis(self) -> dict[str, float] | None:
        """XLA's buffer sizes of the compiled step (MiB): arguments, outputs, temporaries."""
        return xla_buffers_mb(self.step)

    def memory_stats(self) -> dict[str, Any] | None:
        return jax_memory_stats(self._jax.devices()[0])

    def peak_device_mb(self) -> float | None:
        return jax_peak_device_mb(self._jax.devices()[0])

    def run(self, steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        self._jax.block_until_ready(self.state)
        elapsed = time.perf_counter() - t
        self.losses.append(float(metrics["total"]))
        return elapsed


def torch_device(requested: str) -> str:
    """``cuda`` when asked for, or for ``auto`` when torch sees a GPU; else ``cpu``."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--torch-device cuda: this torch sees no CUDA device (torch.cuda.is_available() is False)")
    return requested


class TorchBench(Bench):
    """The PyTorch reference module trained with torch.optim.SGD and the official loss.

    On CUDA: ``cudnn.benchmark`` on, ``channels_last`` optional, bfloat16 by ``torch.autocast``.
    """

    def __init__(self, model_name: str, dtype: str, threads: int, state_dict: dict[str, np.ndarray],
                 images: np.ndarray, labels: np.ndarray, device: str = "cpu", channels_last: bool = False) -> None:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from experiments.support import torch_models

        self.name, self.setup, self.runs, self.losses = "torch", {}, [], []
        self._torch, self._ref = torch, torch_models
        self.device, self.channels_last = torch.device(device), channels_last
        self.cuda = self.device.type == "cuda"
        torch.set_num_threads(threads)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats(self.device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        t = time.perf_counter()
        self.model = torch_models.create_torch_model(model_name, NUM_CLASSES)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
        self.model.to(self.device, memory_format=memory_format)
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=RECIPE["learning_rate"], momentum=RECIPE["momentum"],
                                   weight_decay=RECIPE["weight_decay"])
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # NCHW
        self.x = x.to(self.device).contiguous(memory_format=memory_format)
        self.y = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.autocast = dtype == "bfloat16"
        self._sync()
        self.setup["init_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with FlopCounterMode(display=False) as counter:
            loss = self._step()
        self._sync()
        self.setup["first_step_s"] = time.perf_counter() - t
        self.losses.append(float(loss))
        self.step_flops, self.flops_source = float(counter.get_total_flops()), "torch flop_counter (conv/matmul)"

    def _step(self):
        torch = self._torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            output = self.model(self.x, num_sample=1)
            total, _ = self._ref.loss(self.model, output, self.y)
        total.backward()
        self.opt.step()
        return total.detach()

    def _sync(self) -> None:
        if self.cuda:
            self._torch.cuda.synchronize(self.device)

    def peak_device_mb(self) -> float | None:
        """torch.cuda.max_memory_allocated since this bench was set up (MiB); None on CPU."""
        if not self.cuda:
            return None
        return round(self._torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    def settings(self) -> dict[str, Any]:
        """What decides torch's speed beside the model: device, memory format, autocast, TF32 and cuDNN."""
        backends = self._torch.backends
        out: dict[str, Any] = {"device": str(self.device), "channels_last": self.channels_last,
                               "autocast_bfloat16": self.autocast}
        if self.cuda:  # getattr: these flags move between torch versions, and a missing one must not cost the run
            out.update(cudnn_benchmark=backends.cudnn.benchmark,
                       cudnn_allow_tf32=getattr(backends.cudnn, "allow_tf32", None),
                       matmul_allow_tf32=getattr(backends.cuda.matmul, "allow_tf32", None),
                       float32_matmul_precision=self._torch.get_float32_matmul_precision(),
                       gpu=self._torch.cuda.get_device_name(self.device))
        return out

    def run(self, steps: int) -> float:
        self._sync()
        t = time.perf_counter()
        for _ in range(steps):
            loss = self._step()
        self._sync()
        elapsed = time.perf_counter() - t
        self.losses.append(float(loss))
        return elapsed


# -- the benchmark ---------------------------------------------------------------------------------
def summarize(bench: Bench, batch: int, steps: int) -> dict[str, Any]:
    img_per_s = [batch * steps / s for s in bench.runs]
    median = statistics.median(img_per_s)
    gflops = None if bench.step_flops is None else median / batch * bench.step_flops / 1e9
    return {"img_per_s": median, "img_per_s_runs": [round(v, 3) for v in img_per_s], "gflops": gflops,
            "step_flops": bench.step_flops, "flops_source": bench.flops_source,
            "peak_added_mb": bench.peak_added_mb,
            "losses": [round(v, 4) for v in bench.losses], **bench.setup}


def paired_ratios(jax_runs: list[float], torch_runs: list[float]) -> list[float]:
    """JAX's speed over torch's for each interleaved pair of runs (the times of run i of each).

    Adjacent runs share the machine's state, so on a machine whose speed drifts (a shared
    virtual machine: 20% between runs of the same work) the ratios of pairs spread less than
    the frameworks' own rates; the headline ``ratio`` stays the ratio of the medians.
    """
    return [round(t / j, 3) for j, t in zip(jax_runs, torch_runs, strict=True)]


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    print(f"{'framework':10s} {'img/s':>8s} {'GFLOP/s':>8s} {'GFLOP/step':>10s} {'compile s':>9s} "
          f"{'1st step s':>10s} {'peak +MB':>8s}  runs (img/s)")
    for name, r in rows.items():
        step_gflop = None if r["step_flops"] is None else r["step_flops"] / 1e9
        print(f"{name:10s} {r['img_per_s']:8.2f} {_fmt(r['gflops'], '8.1f')} {_fmt(step_gflop, '10.1f')} "
              f"{_fmt(r.get('compile_s'), '9.1f')} {_fmt(r.get('first_step_s'), '10.1f')} "
              f"{_fmt(r['peak_added_mb'], '8.0f')}  {r['img_per_s_runs']}")


def direct_gflops(rows: dict[str, dict[str, Any]]) -> float | None:
    """JAX images/s times torch's FLOPs per image: the JAX step rated by the model's direct-convolution work."""
    torch_row = rows.get("torch")
    if torch_row is None or torch_row["gflops"] is None:
        return None
    return rows["jax"]["img_per_s"] * torch_row["gflops"] / torch_row["img_per_s"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="vgg_aib", choices=AIB_MODELS + PLAIN_MODELS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per framework (median reported)")
    parser.add_argument("--steps", type=int, default=3, help="train steps per timed run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "slices", "winograd"),
                        help="JAX convolution form (auto: on CPU Winograd for wide 3x3 stride-1 convolutions and "
                             "slices for the rest, XLA's conv elsewhere)")
    parser.add_argument("--no-torch", action="store_true", help="time the JAX step only")
    parser.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where torch trains (auto: CUDA when torch sees a GPU)")
    parser.add_argument("--torch-channels-last", action="store_true",
                        help="torch model and batch in channels_last (NHWC) memory format")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.batch, args.repeats, args.steps, args.threads) < 1 or args.warmup < 0:
        parser.error("--batch, --repeats, --steps and --threads must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cpus = limit_cpus(args.threads)  # before jax creates its CPU client
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # a GPU shared with torch; peaks measured
    load_start = os.getloadavg()
    import jax

    from ib_attention_jax.interop import to_state_dict
    from ib_attention_jax.training import loop  # noqa: F401 (its imports before the memory baseline)

    if not args.no_torch:
        import torch  # noqa: F401 (imported before the memory baseline, like jax)

    rng = np.random.default_rng(args.seed + 1000)
    images = rng.standard_normal((args.batch, 32, 32, 3)).astype(np.float32)
    labels = np.arange(args.batch) % NUM_CLASSES
    release_free_heap()
    rss_base = rss_mb()

    print(f"{args.model}, batch {args.batch}, {args.dtype}, {device_name(jax.devices()[0])}, {args.threads} threads "
          f"on CPUs {cpus}, load average {load_start[0]:.2f}; building and compiling the JAX step...", flush=True)
    jb = JaxBench(args.model, args.batch, args.dtype, args.conv_impl, args.seed, images, labels)
    jax_peak = peak_rss_mb()  # nothing of torch allocated yet
    jb.peak_added_mb = None if rss_base is None else round(jax_peak - rss_base, 1)
    print(f"  jax: init {jb.setup['init_s']:.1f} s, compile {jb.setup['compile_s']:.1f} s, "
          f"first step {jb.setup['first_step_s']:.1f} s", flush=True)
    benches: list[Bench] = [jb]
    if not args.no_torch:
        state_dict = to_state_dict(jb.model, jb.initial_variables())
        release_free_heap()  # as the JAX side had after compiling
        rss_before, can_reset = rss_mb(), reset_peak_rss()
        tb = TorchBench(args.model, args.dtype, args.threads, state_dict, images, labels,
                        torch_device(args.torch_device), args.torch_channels_last)
        del state_dict
        for _ in range(args.warmup):
            tb.run(1)
        hwm = phase_peak_mb()
        if can_reset and hwm is not None and rss_before is not None:
            tb.peak_added_mb = round(hwm - rss_before, 1)
        print(f"  torch ({tb.device}): first step (with FLOP counting) {tb.setup['first_step_s']:.1f} s", flush=True)
        benches.append(tb)
    for _ in range(args.warmup):
        jb.run(1)
    for r in range(args.repeats):  # interleaved: jax, torch, jax, torch, ...
        for bench in benches:
            bench.runs.append(bench.run(args.steps))
        print(f"  run {r + 1}/{args.repeats}: " + ", ".join(
            f"{b.name} {args.batch * args.steps / b.runs[-1]:.2f} img/s" for b in benches), flush=True)
    rows = {b.name: summarize(b, args.batch, args.steps) for b in benches}
    load_end = os.getloadavg()
    print()
    print_table(rows)
    print(f"load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
          f"at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}; FLOPs: jax from "
          f"{rows['jax']['flops_source']}" + (f", torch from {rows['torch']['flops_source']}" if "torch" in rows
                                             else ""))
    direct = direct_gflops(rows)
    if direct is not None:
        print(f"jax at the model's direct-convolution FLOP count (torch's): {direct:.1f} GFLOP/s")

    j, t = rows["jax"], rows.get("torch")
    tb = next((b for b in benches if isinstance(b, TorchBench)), None)
    pairs = None if tb is None else paired_ratios(jb.runs, tb.runs)
    if pairs is not None:
        print(f"jax / torch per interleaved run: {pairs}, median {statistics.median(pairs):.3f}")
    result = {
        "model": args.model, "batch": args.batch,
        "jax_img_per_s": round(j["img_per_s"], 3),
        "torch_img_per_s": None if t is None else round(t["img_per_s"], 3),
        "ratio": None if t is None else round(j["img_per_s"] / t["img_per_s"], 3),
        "ratio_runs": pairs,
        "jax_gflops": None if j["gflops"] is None else round(j["gflops"], 1),
        "torch_gflops": None if t is None or t["gflops"] is None else round(t["gflops"], 1),
        "jax_direct_gflops": None if direct is None else round(direct, 1),
        "jax_step_gflop": None if j["step_flops"] is None else round(j["step_flops"] / 1e9, 2),
        "torch_step_gflop": None if t is None or t["step_flops"] is None else round(t["step_flops"] / 1e9, 2),
        "jax_flops_source": j["flops_source"],
        "jax_img_per_s_runs": j["img_per_s_runs"], "torch_img_per_s_runs": None if t is None else t["img_per_s_runs"],
        "compile_s": round(j["compile_s"], 2), "jax_init_s": round(j["init_s"], 2),
        "jax_first_step_s": round(j["first_step_s"], 2),
        "torch_first_step_s": None if t is None else round(t["first_step_s"], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "jax_peak_rss_mb": round(jax_peak, 1),
        "base_rss_mb": None if rss_base is None else round(rss_base, 1), "jax_peak_added_mb": j["peak_added_mb"],
        "torch_peak_added_mb": None if t is None else t["peak_added_mb"],
        "jax_rss_mb": {phase: None if (mb := j[f"rss_{phase}_mb"]) is None else round(mb, 1)
                       for phase in ("with_state", "compiled", "after_first_step")},
        "jax_buffers_mb": jb.memory_analysis(), "jax_memory_stats": jb.memory_stats(),
        "jax_peak_device_mb": jb.peak_device_mb(), "torch_peak_device_mb": None if tb is None else tb.peak_device_mb(),
        "jax_matmul_precision": jax.config.jax_default_matmul_precision or "default",
        "torch_settings": None if tb is None else tb.settings(),
        "jax_losses": j["losses"], "torch_losses": None if t is None else t["losses"],
        "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
        "cpus": cpus, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "ld_preload": os.environ.get("LD_PRELOAD", ""), "dtype": args.dtype,
        "conv_impl": args.conv_impl,
        "loadavg_start": [round(v, 2) for v in load_start], "loadavg_end": [round(v, 2) for v in load_end],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_name(jax.devices()[0]), "host_cpu": cpu_name(), "host_cpu_kind": cpu_kind(),
        "versions": versions(t is not None),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from ib_attention_jax import cpu_memory

    cpu_memory.reexec_with_huge_pages("experiments.benchmarks.train_step", sys.argv[1:])
    main()
