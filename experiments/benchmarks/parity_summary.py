"""The parity fixtures checked one by one at the highest matmul precision, one JSON line per fixture.

    python -m experiments.benchmarks.parity_summary tests/fixtures/official_parity/*.json
    JAX_ENABLE_X64=1 python -m experiments.benchmarks.parity_summary --precision float64 \
        tests/fixtures/official_train_step/*.json

Calls ``ib_attention_jax.interop.parity.check`` for each fixture (forward, baseline,
train-step and schedule fixtures alike) under ``jax_default_matmul_precision='highest'``,
so a GPU or TPU multiplies in full float32 (no TF32 or bfloat16 passes). It prints the
fixtures it will check (``PARITY_PLAN [paths]``) and, as each one finishes, a line
``PARITY_RESULT {json}``: pass or fail, the seconds it took and its worst comparison
(largest error relative to its tolerance). A fixture that cannot be
checked (a bad manifest, a missing npz, an error while running) is a failing line with
the error, and the others still run. The float64 train-step records need a process with
``JAX_ENABLE_X64=1``; fixtures of other kinds are left out at ``--precision float64``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
import traceback
from typing import Any

MARKER = "PARITY_RESULT "
PLAN_MARKER = "PARITY_PLAN "
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _ratio(error: float, tolerance: float | None) -> float:
    """Error over tolerance (how close to failing); a zero tolerance counts any error as infinitely far over."""
    if tolerance is None:
        return 0.0
    if tolerance > 0:
        return error / tolerance if math.isfinite(error) else math.inf
    return 0.0 if error == 0 else math.inf


def worst_of(report: Any) -> dict[str, Any]:
    """The comparison (forward report) or tolerance class (train-step, schedule report) nearest to failing.

    Reports of ``interop.parity``: ``comparisons`` of (key, max_abs, normwise, tolerance, passed) or
    ``classes`` of (name, max_error, max_key, tol_max, passed).
    """
    if getattr(report, "comparisons", None) is not None:
        items = [(_ratio(c.normwise, c.tolerance), {"output": c.key, "error": _finite(c.normwise),
                                                    "max_abs": _finite(c.max_abs), "tolerance": c.tolerance,
                                                    "passed": bool(c.passed)})
                 for c in report.comparisons]
        failing = [c.key for c in report.comparisons if not c.passed]
        measure = "normwise (max |ours - ref| / max |ref|; relative for scalars)"
    else:
        classes = getattr(report, "classes", None) or []
        items = [(_ratio(c.max_error, c.tol_max), {"output": f"{c.name}: {c.max_key}", "error": _finite(c.max_error),
                                                   "tolerance": c.tol_max, "passed": bool(c.passed)})
                 for c in classes]
        failing = [c.name for c in classes if not c.passed]
        measure = "largest error of the tolerance class"
    if not items:
        return {"compared": 0, "failing": failing, "worst": None, "measure": measure}
    ratio, worst = max(items, key=lambda item: item[0])
    return {"compared": len(items), "failing": failing, "worst": {**worst, "error_over_tolerance": _finite(ratio)},
            "measure": measure}


def relative_name(path: str | pathlib.Path) -> str:
    """The fixture's path relative to the repository when it lies inside it."""
    resolved = pathlib.Path(path).resolve()
    try:
        return str(resolved.relative_to(ROOT))
    except ValueError:
        return str(path)


def check_one(path: str, precision: str) -> dict[str, Any]:
    """One fixture's result row; errors become a failing row with the message."""
    from ib_attention_jax.interop import parity

    t = time.perf_counter()
    row: dict[str, Any] = {"fixture": relative_name(path), "precision": precision}
    try:
        report = parity.check(path, precision)
        row.update(passed=bool(report.passed), model=getattr(report, "model", None) or getattr(report, "title", None),
                   kind=type(report).__name__, **worst_of(report))
    except Exception as err:  # recorded, and the next fixture runs
        row.update(passed=False, error=f"{type(err).__name__}: {err}",
                   traceback=traceback.format_exc(limit=4)[-2000:])
    row["seconds"] = round(time.perf_counter() - t, 2)
    return row


def train_step_fixtures(paths: list[str]) -> list[str]:
    """The fixtures with float64 records (train-step fixtures); the others have float32 references only."""
    from ib_attention_jax.interop import parity

    kept = []
    for path in paths:
        try:
            if parity.fixture_kind(parity.read_manifest(path)) == "train_step":
                kept.append(path)
        except Exception:
            kept.append(path)  # reported as failing when it runs
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("fixtures", nargs="+", help="fixture JSON files (the npz beside each)")
    parser.add_argument("--precision", default="float32", choices=("float32", "float64"),
                        help="which train-step records to compare (float64 needs JAX_ENABLE_X64=1)")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    if (args.precision == "float64") != bool(jax.config.jax_enable_x64):
        parser.error(f"--precision {args.precision} needs JAX_ENABLE_X64={int(args.precision == 'float64')}")
    paths = train_step_fixtures(args.fixtures) if args.precision == "float64" else args.fixtures
    print(f"{len(paths)} fixtures, {args.precision}, matmul precision highest, on {jax.devices()[0]}", flush=True)
    print(PLAN_MARKER + json.dumps([relative_name(p) for p in paths]), flush=True)
    ok = True
    for path in paths:
        row = check_one(path, args.precision)
        ok &= row["passed"]
        print(f"  {'PASS' if row['passed'] else 'FAIL'} {row['fixture']} ({row['seconds']:.1f} s)"
              + (f": {row['error']}" if "error" in row else ""), flush=True)
        print(MARKER + json.dumps(row), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
