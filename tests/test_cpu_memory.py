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
    env["JAX_PLATFORMS"] = "cpu"  # the restart is for the CPU backend (on a GPU host too)
    env.update(extra_env)
    done = subprocess.run([sys.executable, "-m", "hp_probe.main", "--flag=1", "two words"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not cpu_memory.huge_pages_available(), reason="needs Linux, glibc >= 2.35 and THP not 'never'")
def test_program_restarts_itself_with_the_tunable_and_the_same_arguments(tmp_path):
    assert _run_program(tmp_path, {}) == f"{cpu_memory.TUNABLE} | --flag=1 two words"


def test_opting_out_keeps_the_environment(tmp_path):
    assert _run_program(tmp_path, {cpu_memory.OPT_OUT_ENV: "1"}) == "| --flag=1 two words"


@pytest.mark.parametrize(("platforms", "cpu"), [("cpu", True), ("cuda", False), ("gpu", False), ("tpu", False),
                                                ("tpu,cpu", False), ("cpu,cuda", True), (" CPU ", True)])
def test_jax_platforms_names_the_default_backend(platforms, cpu):
    assert cpu_memory.default_backend_is_cpu({"JAX_PLATFORMS": platforms}, plugins=["jax_plugins.xla_cuda12"]) is cpu


def test_unset_platforms_mean_cpu_only_without_an_accelerator_plugin():
    assert cpu_memory.default_backend_is_cpu({}, plugins=[])
    assert cpu_memory.default_backend_is_cpu({"JAX_PLATFORMS": ""}, plugins=[])
    assert not cpu_memory.default_backend_is_cpu({}, plugins=["jax_plugins.xla_cuda12"])
    assert not cpu_memory.default_backend_is_cpu({"TPU_LIBRARY_PATH": "/opt/libtpu.so"}, plugins=[])


def test_a_plugin_module_under_the_jax_plugins_namespace_is_found_without_importing_it(tmp_path, monkeypatch):
    plugin = tmp_path / "jax_plugins" / "xla_fake_gpu"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "jax_plugins.xla_fake_gpu" in cpu_memory.accelerator_plugins()
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    assert not cpu_memory.default_backend_is_cpu()


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_no_restart_where_the_backend_is_an_accelerator(platform, monkeypatch):
    def refuse(*args):
        raise AssertionError(f"restarted: {args}")

    monkeypatch.setattr(cpu_memory.os, "execve", refuse)
    monkeypatch.setattr(cpu_memory, "huge_pages_available", lambda: True)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(cpu_memory.OPT_OUT_ENV, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", platform)
    assert cpu_memory.reexec_with_huge_pages("some.module", ["--flag"]) is None
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the same call on the CPU backend does restart
    with pytest.raises(AssertionError, match="restarted"):
        cpu_memory.reexec_with_huge_pages("some.module", ["--flag"])
