"""The huge-page restart of the command-line programs: environment handling and the restart itself."""

import os
import subprocess
import sys
import textwrap

import pytest

from ib_attention_jax import cpu_memory


def test_environment_with_huge_pages_keeps_other_tunables_and_replaces_an_old_setting():
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0", "PATH": "/bin"}
    out = cpu_memory.environment_with_huge_pages(env)
    assert out["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert out["PATH"] == "/bin" and env["GLIBC_TUNABLES"].endswith("hugetlb=0")  # the input is not changed
    assert cpu_memory.environment_with_huge_pages({})["GLIBC_TUNABLES"] == cpu_memory.TUNABLE
    assert cpu_memory.huge_pages_requested(out) and not cpu_memory.huge_pages_requested(env)


def _run_program(tmp_path, extra_env):
    package = tmp_path / "hp_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text(textwrap.dedent("""
        import os, sys
        from ib_attention_jax import cpu_memory
        if __name__ == "__main__":
            cpu_memory.reexec_with_huge_pages("hp_probe.main", sys.argv[1:])
            print(os.environ.get("GLIBC_TUNABLES", ""), "|", " ".join(sys.argv[1:]))
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", cpu_memory.OPT_OUT_ENV)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(cpu_memory.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), root])
    env.update(extra_env)
    done = subprocess.run([sys.executable, "-m", "hp_probe.main", "--flag=1", "two words"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not cpu_memory.huge_pages_available(), reason="needs Linux, glibc >= 2.35 and THP not 'never'")
def test_program_restarts_itself_with_the_tunable_and_the_same_arguments(tmp_path):
    assert _run_program(tmp_path, {}) == f"{cpu_memory.TUNABLE} | --flag=1 two words"


def test_opting_out_keeps_the_environment(tmp_path):
    assert _run_program(tmp_path, {cpu_memory.OPT_OUT_ENV: "1"}) == "| --flag=1 two words"
