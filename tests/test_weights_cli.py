"""Weights in and out of runs through the command line: export for the official scripts, evaluate
other weights, fine-tune from another run (the CLI in a subprocess, as a user runs it)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ib_attention_jax import create_model, data
from ib_attention_jax.interop.official_layouts import official_checkpoint
from ib_attention_jax.interop.state_dict import to_state_dict
from ib_attention_jax.interop.torch_io import save_official_checkpoint
from tests.helpers.weight_checks import assert_state_dicts_bitwise_equal, parity_state_dict, random_variables

TORCH_REASON = "official checkpoint files need the optional torch extra: make torch"

REPO = pathlib.Path(__file__).parent.parent
SMALL_WRN = ["--config.model_kwargs.depth=10", "--config.model_kwargs.widen=2", "--config.model_kwargs.latent_dim=16",
             "--config.model_kwargs.conv_impl=xla"]
QUICK = ["--config=experiments/configs/quickstart.py", "--config.model_kwargs.conv_impl=xla",
         "--config.eval_batch_size=32", "--config.eval_split=test[:64]", "--config.eval_num_samples=2",
         "--config.progress=False", "--config.export_examples=4", "--config.attention_metrics_examples=0"]


def cli(workdir, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "experiments.main", f"--workdir={workdir}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def save(obj, path: pathlib.Path) -> pathlib.Path:
    """Saves a checkpoint object of numpy arrays as the official scripts save theirs."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)

    def convert(x):
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.array(x, copy=True))
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        return x

    torch.save(convert(obj), path)
    return path


@pytest.fixture
def empty_data(tmp_path) -> dict:
    """An environment whose only data folder is empty: the export modes must not need a dataset."""
    pytest.importorskip("torch", reason=TORCH_REASON)
    (tmp_path / "no_data").mkdir()
    return {"TFDS_DATA_DIR": str(tmp_path / "no_data")}


def test_export_official_vgg_without_any_dataset_equals_the_input_bitwise(tmp_path, empty_data):
    sd = parity_state_dict("vgg_aib_cifar10")
    source = save(official_checkpoint("vgg", sd, family="vgg", quantized=False, epoch=7), tmp_path / "in.tar")
    out = tmp_path / "out.tar"
    proc = cli(tmp_path / "w", "--config=experiments/configs/vgg_aib_cifar10.py", "--mode=export_official",
               f"--config.init_from={source}", f"--output={out}", "--config.model_kwargs.conv_impl=xla",
               env=empty_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    written = torch.load(out, weights_only=True)
    expected = torch.load(source, weights_only=True)["model_states"]["net"]
    assert_state_dicts_bitwise_equal(written["model_states"]["net"], expected)  # the VGG script's access path
    assert written["epoch"] == 7
    assert not os.listdir(empty_data["TFDS_DATA_DIR"])


def test_export_official_wrn_keeps_the_dataparallel_layout(tmp_path, empty_data):
    model = create_model("wrn_aib", 10, depth=10, widen=2, latent_dim=16, conv_impl="xla")
    sd = to_state_dict(model, random_variables(model))
    source = save(official_checkpoint("wrn", sd, family="wrn", quantized=False, epoch=3), tmp_path / "in.pth.tar")
    out = tmp_path / "out.pth.tar"
    proc = cli(tmp_path / "w", "--config=experiments/configs/wrn_aib_cifar10.py", "--mode=export_official",
               f"--config.init_from={source}", f"--output={out}", *SMALL_WRN, env=empty_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    written = torch.load(out, weights_only=True)
    assert all(k.startswith("module.") for k in written["state_dict"])
    assert_state_dicts_bitwise_equal(written["state_dict"], torch.load(source, weights_only=True)["state_dict"])
    assert "best_acc" in written and written["epoch"] == 3


def test_export_official_cub_writes_net_and_net_ema(tmp_path, empty_data):
    sd = parity_state_dict("cub_vgg16_aib")
    ema = {k: v * 0.5 for k, v in sd.items()}
    source = save(official_checkpoint("cub", sd, family="cub_vgg16", quantized=False, ema_state_dict=ema, epoch=2,
                                      step=748), tmp_path / "best_acc.tar")
    out = tmp_path / "out.tar"
    proc = cli(tmp_path / "w", "--config=experiments/configs/cub_vgg16_aib.py", "--mode=export_official",
               f"--config.init_from={source}", f"--output={out}", "--config.model_kwargs.conv_impl=xla",
               env=empty_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    written, original = torch.load(out, weights_only=True), torch.load(source, weights_only=True)
    for which in ("net", "net_ema"):  # what solver.load_checkpoint reads
        assert_state_dicts_bitwise_equal(written["model_states"][which], original["model_states"][which])
    assert (written["epoch"], written["iter"]) == (2, 748) and "history" in written and "optim_states" in written


def test_export_official_refuses_weights_of_another_model(tmp_path, empty_data):
    source = save(official_checkpoint("vgg", parity_state_dict("vgg_aib_cifar10"), family="vgg", quantized=False),
                  tmp_path / "in.tar")
    proc = cli(tmp_path / "w", "--config=experiments/configs/vgg_aib_qt_cifar10.py", "--mode=export_official",
               f"--config.init_from={source}", f"--output={tmp_path / 'out.tar'}",
               "--config.model_kwargs.conv_impl=xla", env=empty_data)
    assert proc.returncode == 1 and "quantizer" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out.tar").exists()


def test_export_official_needs_an_output(tmp_path, empty_data):
    proc = cli(tmp_path / "w", "--config=experiments/configs/vgg_aib_cifar10.py", "--mode=export_official",
               "--config.init_from=whatever.tar", env=empty_data)
    assert proc.returncode == 1 and "--output" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tfds")
    data.build_cluttered_digits(str(path))
    return str(path)


def test_evaluate_scores_an_official_state_dict_file_in_an_empty_workdir(tmp_path, data_dir):
    pytest.importorskip("torch", reason=TORCH_REASON)
    model = create_model("small_aib", 10, latent_dim=64)
    weights = tmp_path / "weights.pth"
    save_official_checkpoint(weights, to_state_dict(model, random_variables(model)))
    workdir = tmp_path / "scored"
    proc = cli(workdir, *QUICK, f"--config.data_dir={data_dir}", "--mode=evaluate", f"--config.init_from={weights}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((workdir / "eval.json").read_text())
    assert result["step"] == 0 and result["init_from"] == str(weights) and result["num_examples"] == 64
    assert 0.0 <= result["accuracy_mc"] <= 1.0
    assert "kept at init:" in proc.stdout and "loaded:" in proc.stdout  # the load report


def test_evaluate_refuses_weights_that_leave_part_of_the_model_random(tmp_path, data_dir):
    pytest.importorskip("torch", reason=TORCH_REASON)
    model = create_model("small_aib", 10, latent_dim=64)
    weights = tmp_path / "weights.pth"
    save_official_checkpoint(weights, to_state_dict(model, random_variables(model)))
    proc = cli(tmp_path / "w", *QUICK, f"--config.data_dir={data_dir}", "--mode=evaluate",
               f"--config.init_from={weights}", "--config.model=small_aib_qt")
    assert proc.returncode == 1 and "quantizer" in proc.stderr and "random initialisation" in proc.stderr, proc.stderr


def test_a_run_fine_tuned_from_another_run_reports_the_anchors_kept_at_init(tmp_path, data_dir):
    base, tuned = tmp_path / "aib", tmp_path / "aib_qt"
    common = [*QUICK, f"--config.data_dir={data_dir}", "--config.num_steps=2", "--config.train_split=train[:256]",
              "--config.batch_size=16"]
    assert cli(base, *common).returncode == 0
    proc = cli(tuned, *common, "--config.model=small_aib_qt", f"--config.init_from={base}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(":")[0].strip(): line for line in proc.stdout.splitlines() if ":" in line}
    assert "quantizer" in lines["kept at init"] and "quantizer" not in lines["loaded"], proc.stdout
    assert "front" in lines["loaded"] and "encoder" in lines["loaded"] and "decoder" in lines["loaded"]
