"""One command for an accelerator: parity at full precision, the train steps against PyTorch, the quickstart rate.

    python -m experiments.benchmarks.accelerator --out workdir/accelerator.json     # on a GPU: <= 7.5 minutes
    python -m experiments.benchmarks.accelerator --tiny                             # anywhere: tiny sizes
    bash experiments/benchmarks/run_on_gpu.sh        # a GPU machine without network (wheels: gpu_wheels.sh)

Writes one JSON file (rewritten atomically after every part, ``"complete": true`` at the
end) with three sections:

* ``parity``: every fixture of ``tests/fixtures/official_parity``, ``baselines_parity`` and
  ``official_train_step`` checked by ``interop.parity.check`` under
  ``jax_default_matmul_precision='highest'`` (``parity_summary.py``): pass or fail and
  the worst comparison of each; then, time permitting, the float64 train-step records
  (``parity_float64``, in a process with ``JAX_ENABLE_X64=1``);
* ``train_step``: ``vgg_aib`` and ``wrn_aib`` at batch 128 in float32 and in bfloat16
  (``half_precision``) against the PyTorch reference on the same device
  (``train_step.py``, one process per model and dtype so that each peak memory is its
  own): float32, and AMP bfloat16 (``torch.autocast``) with channels_last. Per framework:
  images/s, achieved TFLOP/s (JAX: XLA's cost analysis of the compiled step; PyTorch: its
  FLOP counter's count of convolutions and matmuls) and their share of the chip's dense
  bfloat16 peak, peak device memory (``peak_bytes_in_use``; ``max_memory_allocated``), the
  compile time; the JAX/PyTorch ratio. float32 runs as each framework does by default (XLA's
  DEFAULT precision and cuDNN's convolutions may use TF32 tensor cores); the JSON records
  JAX's matmul precision and torch's TF32 flags;
* ``quickstart``: the quickstart recipe's training rate on the embedded dataset, built in
  a temporary folder (``quickstart_rate.py``).

Every part runs in a child process under a time box cut from ``--time-budget``: a part
that runs out of time is stopped and recorded with the reason (parity keeps the fixtures
it finished), and a part that no longer fits is skipped with the reason. Each part's wall
time is in the file. Without a GPU or TPU the command runs tiny sizes (``--tiny``: batch
2, one timed step, one fixture of each kind), so CI keeps it working; ``--full`` forces
the real sizes anywhere.

The share of peak needs the chip's peak: known for the chips in ``PEAK_BF16_TFLOPS``,
else give ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from experiments.benchmarks.parity_summary import MARKER as PARITY_MARKER
from experiments.benchmarks.parity_summary import PLAN_MARKER
from ib_attention_jax.runtime.atomic import atomic_write_text

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Dense (no 2:4 sparsity) bfloat16 tensor-core peak in TFLOP/s by JAX device_kind. Source: NVIDIA's
# datasheets, "BF16 Tensor Core" row, which is quoted with sparsity (footnote), so dense is half:
# H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200/): H200 SXM 1,979 -> 989.5,
# H200 NVL 1,671 -> 835.5; H100 Tensor Core GPU datasheet: H100 SXM 1,979 -> 989.5. Plain float32 on
# the H200 SXM is 67 TFLOP/s by the same datasheet. Override with --peak-tflops.
PEAK_BF16_TFLOPS = {"NVIDIA H200": 989.5, "NVIDIA H200 NVL": 835.5, "NVIDIA H100 80GB HBM3": 989.5}
PEAK_SOURCE = "NVIDIA datasheet, BF16 Tensor Core with sparsity / 2 (dense)"

PARITY_GLOBS = ("tests/fixtures/official_parity/*.json", "tests/fixtures/baselines_parity/*.json",
                "tests/fixtures/official_train_step/*.json")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures; ``full`` on an accelerator, ``tiny`` elsewhere."""

    batch: int
    steps: int
    repeats: int
    warmup: int
    quickstart_batch: int | None  # None: the recipe's
    quickstart_warmup: int
    quickstart_steps: int
    time_budget_s: float
    train_cap_s: float  # the most one (model, dtype) child may take
    train_min_s: float  # below this left, a (model, dtype) child is skipped
    quickstart_cap_s: float
    quickstart_min_s: float
    parity_min_s: float


FULL = Sizes(batch=128, steps=20, repeats=3, warmup=2, quickstart_batch=None, quickstart_warmup=5,
             quickstart_steps=100, time_budget_s=440, train_cap_s=150, train_min_s=40, quickstart_cap_s=90,
             quickstart_min_s=25, parity_min_s=45)
TINY = Sizes(batch=2, steps=1, repeats=1, warmup=0, quickstart_batch=8, quickstart_warmup=1, quickstart_steps=2,
             time_budget_s=300, train_cap_s=150, train_min_s=10, quickstart_cap_s=90, quickstart_min_s=10,
             parity_min_s=10)


# -- time ------------------------------------------------------------------------------------------
class Budget:
    """Seconds left of ``total_s`` since construction; each part's box leaves the later parts their minimum."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s, self._clock = total_s, clock
        self._start = clock()

    def elapsed(self) -> float:
        return self._clock() - self._start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def box(self, cap_s: float | None, reserve_s: float) -> float:
        """The time a part may take: at most ``cap_s``, leaving ``reserve_s`` for the parts after it."""
        room = self.left() - reserve_s
        return room if cap_s is None else min(cap_s, room)


@dataclasses.dataclass
class ChildResult:
    returncode: int | None  # None when it was stopped at its time box
    seconds: float
    output: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_child(cmd: list[str], box_s: float, env: dict[str, str] | None = None, echo: bool = True) -> ChildResult:
    """Runs ``cmd`` in the repository with its output in a file; kills its process group after ``box_s``."""
    t = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode: int | None = proc.wait(timeout=max(box_s, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
        log.seek(0)
        output = log.read()
    if echo:
        sys.stdout.write(output if output.endswith("\n") or not output else output + "\n")
        sys.stdout.flush()
    return ChildResult(returncode, round(time.monotonic() - t, 2), output)


def last_json_line(output: str) -> dict[str, Any] | None:
    """The last line of ``output`` that is a JSON object (what the benchmark scripts print last)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def failure(child: ChildResult, box_s: float) -> dict[str, Any]:
    """Why a child gave no result: its time box, or its exit status and the end of its output."""
    if child.timed_out:
        return {"status": "timed_out", "reason": f"stopped at its time box of {box_s:.0f} s"}
    return {"status": "failed", "reason": f"exit status {child.returncode}", "output_tail": child.output[-3000:]}


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


# -- (b) train steps -----------------------------------------------------------------------------
def _rate(gflops: float | None) -> float | None:
    return None if gflops is None else round(gflops / 1e3, 4)


def _share(tflops: float | None, peak: float | None) -> float | None:
    return None if tflops is None or not peak else round(tflops / peak, 4)


def framework_figures(child: dict[str, Any], name: str, peak_tflops: float | None) -> dict[str, Any] | None:
    """One framework's figures from ``train_step.py``'s JSON line; None where it did not run."""
    img = child.get(f"{name}_img_per_s")
    if img is None:
        return None
    tflops = _rate(child.get(f"{name}_gflops"))
    device_mb, rss_mb = child.get(f"{name}_peak_device_mb"), child.get(f"{name}_peak_added_mb")
    out = {"img_per_s": img, "img_per_s_runs": child.get(f"{name}_img_per_s_runs"), "tflops": tflops,
           "share_of_bf16_peak": _share(tflops, peak_tflops),
           "step_tflop": None if child.get(f"{name}_step_gflop") is None else child[f"{name}_step_gflop"] / 1e3,
           "peak_memory_mb": device_mb if device_mb is not None else rss_mb,
           "memory_source": ("device: " + ("peak_bytes_in_use" if name == "jax" else "torch.cuda.max_memory_allocated")
                             if device_mb is not None else "host: peak RSS rise over the process before its setup"),
           "first_step_s": child.get(f"{name}_first_step_s"), "losses": child.get(f"{name}_losses")}
    if name == "jax":
        direct = _rate(child.get("jax_direct_gflops"))
        out.update(compile_s=child.get("compile_s"), init_s=child.get("jax_init_s"),
                   flops_source=child.get("jax_flops_source"), matmul_precision=child.get("jax_matmul_precision"),
                   tflops_at_torch_count=direct, buffers_mb=child.get("jax_buffers_mb"))
    else:
        out.update(flops_source="torch.utils.flop_counter (convolutions and matmuls)",
                   settings=child.get("torch_settings"))
    return out


def train_row(child: dict[str, Any], peak_tflops: float | None) -> dict[str, Any]:
    """The ``train_step`` row of one (model, dtype) from ``train_step.py``'s JSON line."""
    return {"status": "ok", "model": child["model"], "dtype": child["dtype"], "batch": child["batch"],
            "ratio": child.get("ratio"), "jax": framework_figures(child, "jax", peak_tflops),
            "torch": framework_figures(child, "torch", peak_tflops), "device": child.get("device"),
            "steps": child.get("steps"), "repeats": child.get("repeats"), "warmup": child.get("warmup"),
            "versions": child.get("versions")}


def train_step_command(model: str, dtype: str, sizes: Sizes, threads: int | None, torch: bool) -> list[str]:
    cmd = [sys.executable, "-m", "experiments.benchmarks.train_step", "--model", model, "--dtype", dtype,
           "--batch", str(sizes.batch), "--steps", str(sizes.steps), "--repeats", str(sizes.repeats),
           "--warmup", str(sizes.warmup)]
    if threads:
        cmd += ["--threads", str(threads)]
    if not torch:
        cmd.append("--no-torch")
    elif dtype == "bfloat16":
        cmd.append("--torch-channels-last")  # AMP with channels_last: what a PyTorch user runs
    return cmd


def run_train_step(model: str, dtype: str, sizes: Sizes, box_s: float, threads: int | None, torch: bool,
                   peak_tflops: float | None) -> dict[str, Any]:
    child = run_child(train_step_command(model, dtype, sizes, threads, torch), box_s, child_env())
    result = last_json_line(child.output) if child.returncode == 0 else None
    row = train_row(result, peak_tflops) if result else {"model": model, "dtype": dtype, **failure(child, box_s)}
    if result and not torch:
        row["torch"] = {"skipped": "torch not run (--no-torch, torch not installed, or the run with it failed)"}
    row["wall_s"] = child.seconds
    return row


# -- (c) quickstart ----------------------------------------------------------------------------------
def run_quickstart(sizes: Sizes, box_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "experiments.benchmarks.quickstart_rate", "--warmup", str(sizes.quickstart_warmup),
           "--steps", str(sizes.quickstart_steps)]
    if sizes.quickstart_batch:
        cmd += ["--batch", str(sizes.quickstart_batch)]
    child = run_child(cmd, box_s, child_env())
    result = last_json_line(child.output) if child.returncode == 0 else None
    out = {"status": "ok", **result} if result else failure(child, box_s)
    out["wall_s"] = child.seconds
    return out


# -- (a) parity ---------------------------------------------------------------------------------------
def fixture_order(path: str) -> tuple[int, int, str]:
    """CIFAR before CUB (bigger models), forward before baselines before train steps."""
    folders = ("official_parity", "baselines_parity", "official_train_step")
    parent = pathlib.Path(path).parent.name
    return ("cub" in pathlib.Path(path).name, folders.index(parent) if parent in folders else len(folders), path)


def find_fixtures(patterns: list[str]) -> list[str]:
    """The fixture manifests the patterns match (relative to the repository), cheapest first."""
    found: set[str] = set()
    for pattern in patterns:
        matches = glob.glob(str(ROOT / pattern)) or glob.glob(pattern)
        found.update(os.path.relpath(m, ROOT) for m in matches)
    return sorted(found, key=fixture_order)


def tiny_fixtures(paths: list[str]) -> list[str]:
    """The first fixture of each folder and the schedules fixture: every code path of the checker once."""
    chosen: dict[str, str] = {}
    for path in paths:
        name = pathlib.Path(path).name
        key = "schedules" if "schedule" in name else pathlib.Path(path).parent.name
        if "cub" not in name:
            chosen.setdefault(key, path)
    return sorted(chosen.values(), key=fixture_order)


def parity_rows(output: str, fixtures: list[str], child: ChildResult, box_s: float) -> list[dict[str, Any]]:
    """The rows the checker printed, and one for every fixture of its plan (else ``fixtures``) it did not reach."""
    done = {}
    for line in output.splitlines():
        if line.startswith(PARITY_MARKER):
            row = json.loads(line[len(PARITY_MARKER):])
            done[row["fixture"]] = row
        elif line.startswith(PLAN_MARKER):
            fixtures = json.loads(line[len(PLAN_MARKER):])
    if child.timed_out:
        why = f"not reached: the part stopped at its time box of {box_s:.0f} s"
    else:
        why = f"not reached: the checker exited with status {child.returncode} (see the log)"
    return [done.get(f) or {"fixture": f, "passed": None, "skipped": why} for f in fixtures]


def run_parity(fixtures: list[str], precision: str, box_s: float) -> dict[str, Any]:
    env = child_env(JAX_ENABLE_X64="1" if precision == "float64" else "0")
    cmd = [sys.executable, "-m", "experiments.benchmarks.parity_summary", "--precision", precision, *fixtures]
    child = run_child(cmd, box_s, env)
    rows = parity_rows(child.output, fixtures, child, box_s)  # float64: the checker's plan, train-step fixtures
    if not rows and child.returncode == 0:
        return skipped(f"no fixture with {precision} records among the fixtures", precision=precision,
                       wall_s=child.seconds)
    out = {"status": "ok" if all("skipped" not in r for r in rows) else ("timed_out" if child.timed_out
                                                                          else "incomplete"),
           "precision": precision, "matmul_precision": "highest", "wall_s": child.seconds,
           "passed": sum(r.get("passed") is True for r in rows), "failed": sum(r.get("passed") is False for r in rows),
           "not_reached": sum("skipped" in r for r in rows), "fixtures": rows}
    if child.returncode not in (0, 1, None):
        out["output_tail"] = child.output[-3000:]
    return out


# -- the run ------------------------------------------------------------------------------------------
def detect_device() -> dict[str, Any]:
    """The first JAX device (platform and kind) and the host, without holding the accelerator's memory."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    from experiments.benchmarks.train_step import cpu_kind, cpu_name, versions

    devices = jax.devices()
    return {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices),
            "host_cpu": cpu_name(), "host_cpu_kind": cpu_kind(), "host_cpus": len(os.sched_getaffinity(0)),
            "versions": versions(importlib.util.find_spec("torch") is not None)}


def write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    """Writes ``data`` to ``path`` atomically (``runtime.atomic``: a temporary file beside it, then a rename)."""
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def skipped(reason: str, **fields: Any) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason, **fields}


def _fmt(value: Any, spec: str) -> str:
    return format("-", ">" + spec.split(".")[0]) if value is None else format(value, spec)


def print_summary(result: dict[str, Any]) -> None:
    """A short table of the figures (the JSON has everything)."""
    print(f"\n{result['device']['platform']}: {result['device']['kind']}, {'tiny' if result['tiny'] else 'full'} "
          f"sizes, {result['wall_s']:.0f} s of {result['time_budget_s']:.0f} s; bf16 peak {result['peak']['tflops']} "
          "TFLOP/s")
    print(f"{'model':9s} {'dtype':9s} {'JAX img/s':>10s} {'torch':>8s} {'ratio':>6s} {'JAX TFLOP/s':>11s} "
          f"{'torch':>7s} {'JAX MB':>8s} {'torch MB':>8s} {'compile s':>9s}  status")
    for row in result["train_step"]["rows"]:
        j, t = row.get("jax") or {}, row.get("torch") or {}
        print(f"{row['model']:9s} {row['dtype']:9s} {_fmt(j.get('img_per_s'), '10.1f')} "
              f"{_fmt(t.get('img_per_s'), '8.1f')} {_fmt(row.get('ratio'), '6.2f')} {_fmt(j.get('tflops'), '11.2f')} "
              f"{_fmt(t.get('tflops'), '7.2f')} {_fmt(j.get('peak_memory_mb'), '8.0f')} "
              f"{_fmt(t.get('peak_memory_mb'), '8.0f')} {_fmt(j.get('compile_s'), '9.1f')}  {row['status']}"
              + (f" ({row['reason']})" if row.get("reason") else ""))
    q = result["quickstart"]
    if q.get("status") == "ok":
        print(f"quickstart ({q['model']}, batch {q['batch']}): training loop {q['loop_img_per_s']:.0f} img/s, step "
              f"alone {q['step_img_per_s']:.0f}, input pipeline alone {q['pipeline_img_per_s']:.0f}")
    else:
        print(f"quickstart: {q.get('status')} ({q.get('reason')})")
    for key in ("parity", "parity_float64"):
        p = result[key]
        if p.get("status") == "skipped":
            print(f"{key}: skipped ({p['reason']})")
            continue
        failing = [r["fixture"] for r in p["fixtures"] if r.get("passed") is False]
        print(f"{key} ({p['precision']} records, matmul precision highest): {p['passed']} passed, {p['failed']} "
              f"failed, {p['not_reached']} not reached" + (f"; failing: {', '.join(failing)}" if failing else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", default="workdir/accelerator_benchmark.json", help="the JSON file to write")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="tiny sizes (the default without a GPU or TPU)")
    size.add_argument("--full", action="store_true", help="the real sizes (the default on a GPU or TPU)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the whole run (default 440 full, 300 tiny); parts past it are skipped")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the chip's dense bfloat16 peak in TFLOP/s (default: known chips, PEAK_BF16_TFLOPS)")
    parser.add_argument("--models", default="vgg_aib,wrn_aib", help="comma-separated models of the train-step part")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated compute dtypes")
    parser.add_argument("--batch", type=int, default=None, help="train-step batch (default 128 full, 2 tiny)")
    parser.add_argument("--parity-fixtures", nargs="+", default=None,
                        help="fixture manifests or globs (default: the three fixture folders; tiny: one of each kind)")
    parser.add_argument("--parts", default="train_step,quickstart,parity,parity_float64",
                        help="the parts to run, in this order")
    parser.add_argument("--no-torch", action="store_true", help="time the JAX steps only")
    args = parser.parse_args(argv)
    args.model_list = [m for m in args.models.split(",") if m]
    args.dtype_list = [d for d in args.dtypes.split(",") if d]
    args.part_list = [p for p in args.parts.split(",") if p]
    known = {"train_step", "quickstart", "parity", "parity_float64"}
    if set(args.part_list) - known:
        parser.error(f"--parts: unknown {sorted(set(args.part_list) - known)}; known: {sorted(known)}")
    if set(args.dtype_list) - {"float32", "bfloat16"}:
        parser.error("--dtypes takes float32 and bfloat16")
    if args.batch is not None and args.batch < 1 or args.time_budget is not None and args.time_budget <= 0:
        parser.error("--batch and --time-budget must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    device = detect_device()
    on_accelerator = device["platform"] in ("gpu", "cuda", "rocm", "tpu")
    tiny = args.tiny or (not args.full and not on_accelerator)
    sizes = TINY if tiny else FULL
    if args.batch:
        sizes = dataclasses.replace(sizes, batch=args.batch)
    budget = Budget(args.time_budget or sizes.time_budget_s)
    peak = args.peak_tflops or PEAK_BF16_TFLOPS.get(device["kind"])
    torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    threads = device["host_cpus"] if on_accelerator else None  # a GPU step needs no pinning to few cores
    fixtures = find_fixtures(args.parity_fixtures or list(PARITY_GLOBS))
    if tiny and args.parity_fixtures is None:
        fixtures = tiny_fixtures(fixtures)
    out_path = pathlib.Path(args.out)

    result: dict[str, Any] = {
        "benchmark": "accelerator", "complete": False, "date": started, "tiny": tiny,
        "command": ["python", "-m", "experiments.benchmarks.accelerator", *(sys.argv[1:] if argv is None else argv)],
        "device": device, "time_budget_s": budget.total_s, "wall_s": 0.0,
        "peak": {"tflops": peak, "dtype": "bfloat16", "dense": True,
                 "source": "--peak-tflops" if args.peak_tflops else (PEAK_SOURCE if peak else
                                                                       "unknown chip: give --peak-tflops")},
        "sizes": dataclasses.asdict(sizes), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "train_step": {"status": "ok", "rows": [], "wall_s": 0.0}, "quickstart": skipped("not run yet"),
        "parity": skipped("not run yet"), "parity_float64": skipped("not run yet"),
    }
    if not torch:
        result["torch"] = "not run: " + ("--no-torch" if args.no_torch else "torch is not installed")
    configs = [(m, d) for m in args.model_list for d in args.dtype_list] if "train_step" in args.part_list else []

    def reserve(after: str) -> float:
        """The minimum time of the parts after ``after`` (a train-step config counts as 'train_step')."""
        order = [p for p in args.part_list if p != "parity_float64"]  # float64 records only get what is left
        later = order[order.index(after) + 1:] if after in order else []
        mins = {"quickstart": sizes.quickstart_min_s, "parity": sizes.parity_min_s, "train_step": 0.0}
        return sum(mins[p] for p in later)

    def save() -> None:
        result["wall_s"] = round(budget.elapsed(), 1)
        write_json(out_path, result)

    print(f"accelerator benchmark: {device['platform']} ({device['kind']}), {'tiny' if tiny else 'full'} sizes, "
          f"budget {budget.total_s:.0f} s, writing {out_path}", flush=True)
    for part in args.part_list:
        t = time.monotonic()
        if part == "train_step":
            for i, (model, dtype) in enumerate(configs):
                later_configs = (len(configs) - i - 1) * sizes.train_min_s
                box = budget.box(sizes.train_cap_s, reserve("train_step") + later_configs)
                if box < sizes.train_min_s:
                    row = {"model": model, "dtype": dtype, **skipped(
                        f"time budget: {budget.left():.0f} s left, under the {sizes.train_min_s:.0f} s this needs "
                        "beside the later parts' minimum")}
                else:
                    print(f"== train step {model} {dtype}, batch {sizes.batch} (box {box:.0f} s)", flush=True)
                    row = run_train_step(model, dtype, sizes, box, threads, torch, peak)
                    retry_box = budget.box(sizes.train_cap_s, reserve("train_step") + later_configs)
                    if row["status"] == "failed" and torch and retry_box >= sizes.train_min_s:
                        print(f"== train step {model} {dtype} again, JAX alone (box {retry_box:.0f} s)", flush=True)
                        retry = run_train_step(model, dtype, sizes, retry_box, threads, False, peak)
                        retry["torch"] = {"failed": row["reason"], "output_tail": row.get("output_tail")}
                        row = retry
                result["train_step"]["rows"].append(row)
                result["train_step"]["wall_s"] = round(time.monotonic() - t, 1)
                save()
        elif part == "quickstart":
            box = budget.box(sizes.quickstart_cap_s, reserve("quickstart"))
            if box < sizes.quickstart_min_s:
                result["quickstart"] = skipped(f"time budget: {budget.left():.0f} s left")
            else:
                print(f"== quickstart rate (box {box:.0f} s)", flush=True)
                result["quickstart"] = run_quickstart(sizes, box)
        elif part in ("parity", "parity_float64"):
            precision = "float64" if part == "parity_float64" else "float32"
            box = budget.box(None, reserve(part))
            if not fixtures:
                result[part] = skipped("no fixture matched")
            elif box < (sizes.parity_min_s if part == "parity" else 10):
                result[part] = skipped(f"time budget: {budget.left():.0f} s left", precision=precision)
            else:
                print(f"== parity, {precision} records, {len(fixtures)} fixtures (box {box:.0f} s)", flush=True)
                result[part] = run_parity(fixtures, precision, box)
        save()
    for part in ("quickstart", "parity", "parity_float64"):
        if part not in args.part_list:
            result[part] = skipped("not in --parts")
    if "train_step" not in args.part_list:
        result["train_step"].update(skipped("not in --parts"))
    result["complete"] = True
    save()
    print_summary(result)
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
