"""Parity of the attention baselines (LTPA, ABN) with their public PyTorch code.

A baseline fixture has the layout of the AIB ones (a JSON manifest naming the public
class, its state_dict spec, seed and weight gain, and an npz of that class's outputs),
and ``python -m ib_attention_jax.interop.parity FIXTURE.json`` runs it through
:func:`check_baseline_fixture`: build the registered model, fill it with the manifest's
synthetic weights, run the inference forward, compute the public training loss and
compare every stored output under the AIB fixtures' tolerances (2e-5 normwise for
arrays, 1e-5 relative for scalars). A stored ``<name>_first<N>ch`` array is compared
with the first N channels of ``<name>``.

LTPA's global feature g cancels in its softmax, so its logits and loss cannot show
whether g is right; its compatibility scores ``c1..c3`` and ``g_dense`` can, and are
compared with the rest.
"""

from __future__ import annotations

import functools
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ib_attention_jax.interop.fixture_weights import state_dict_from_manifest
from ib_attention_jax.interop.parity import NOT_COMPARED, Comparison, ParityReport, compare, load_fixture
from ib_attention_jax.interop.state_dict import from_state_dict
from ib_attention_jax.models.registry import create_model
from ib_attention_jax.objectives import ObjectiveConfig, aib_loss

# (public repository, file, class) -> registered model
BASELINE_CLASSES = {
    ("SaoYan/LearnToPayAttention", "model1.py", "AttnVGG_before"): "ltpa_vgg",
    ("machine-perception-robotics-group/attention_branch_network", "models/cifar/wrn.py", "WideResNet"): "abn_wrn",
}
# The public training losses are plain cross entropies in nats (ABN: branch + perception, weights 1).
BASELINE_OBJECTIVE = ObjectiveConfig(units="nats", aux_coef=1.0)
_SLICED = re.compile(r"(?P<name>.+)_first(?P<n>\d+)ch")


def _class_key(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    official = manifest.get("official", {})
    return official.get("repo", ""), official.get("file", ""), official.get("class_name", "")


def is_baseline_fixture(manifest: Mapping[str, Any]) -> bool:
    """Whether the manifest describes one of the attention baselines' public classes."""
    return _class_key(manifest) in BASELINE_CLASSES


def baseline_model_name(manifest: Mapping[str, Any]) -> str:
    """The registered model that reimplements the fixture's public class."""
    key = _class_key(manifest)
    if key not in BASELINE_CLASSES:
        raise ValueError(f"no registered baseline for class {key[2]} in {key[1]} of {key[0]}; "
                         f"known: {', '.join(f'{c} ({r})' for r, _, c in BASELINE_CLASSES)}")
    return BASELINE_CLASSES[key]


def _sown(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Sown values by their own name (the last path element); each was sown once."""
    return {path[-1]: values[-1] for path, values in traverse_util.flatten_dict(dict(intermediates)).items()}


@functools.lru_cache(maxsize=8)
def _forward(name: str, num_classes: int, conv_impl: str):
    """(model, jitted inference forward + public loss); cached so that other weights reuse the compilation."""
    model = create_model(name, num_classes, conv_impl=conv_impl)

    @jax.jit
    def forward(variables, x, labels):
        out, state = model.apply(variables, x, train=False, deterministic=True, mutable=["intermediates"])
        _, parts = aib_loss(out, labels, BASELINE_OBJECTIVE)
        return out, _sown(state["intermediates"]), parts

    return model, forward


def fixture_variables(manifest: Mapping[str, Any], conv_impl: str = "auto") -> dict[str, Any]:
    """The fixture's synthetic weights as our model's variables."""
    model, _ = _forward(baseline_model_name(manifest), int(manifest["num_classes"]), conv_impl)
    return from_state_dict(model, state_dict_from_manifest(manifest))


def run_baseline_model(manifest: Mapping[str, Any], refs: Mapping[str, np.ndarray], conv_impl: str = "auto",
                       variables: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Our outputs, under the fixture's output names (full channel widths), for the inference forward.

    ``variables`` default to the fixture's weights (pass others to see what a wrong port would give).
    """
    name = baseline_model_name(manifest)
    _, forward = _forward(name, int(manifest["num_classes"]), conv_impl)
    if variables is None:
        variables = fixture_variables(manifest, conv_impl)
    x = jnp.asarray(refs["x_nchw"]).transpose(0, 2, 3, 1)
    labels = jnp.asarray(refs["y"]).astype(jnp.int32)
    out, sown, parts = forward(variables, x, labels)
    if name == "ltpa_vgg":
        ours = {"l1_nhwc": sown["l1"], "l1_proj_nhwc": sown["l1_proj"], "l2_nhwc": sown["l2"], "l3_nhwc": sown["l3"],
                "block6_out": sown["block6_out"], "g_dense": sown["g_dense"], "logits": out.logits,
                "g_concat": jnp.concatenate([sown["g1"], sown["g2"], sown["g3"]], axis=-1), "loss": parts["total"]}
        for i in (1, 2, 3):
            ours[f"c{i}_nhwc"] = sown[f"c{i}"]
            ours[f"a{i}_nhwc"] = out.attention_maps[f"a{i}"][..., None]
            ours[f"g{i}"] = sown[f"g{i}"]
    else:
        ours = {"feat_nhwc": out.features, "att_ax_nhwc": sown["att_ax"], "att_logit_nhwc": out.attention.logit,
                "att_nhwc": out.attention.mean, "att_logits": out.aux_logits, "per_logits": out.logits,
                "att_loss": parts["aux_ce"], "per_loss": parts["ce"], "loss": parts["total"]}
    return {k: np.asarray(v) for k, v in ours.items()}


def _ours_for(key: str, ours: Mapping[str, np.ndarray]) -> np.ndarray | None:
    if key in ours:
        return ours[key]
    m = _SLICED.fullmatch(key)
    if m and m["name"] in ours:
        return ours[m["name"]][..., : int(m["n"])]
    return None


def compare_outputs(ours: Mapping[str, np.ndarray], refs: Mapping[str, np.ndarray]) -> list[Comparison]:
    """Every stored output (but the inputs) against ours; a missing one fails as "not produced"."""
    comparisons = []
    for key, ref in refs.items():
        if key in NOT_COMPARED:
            continue
        mine = _ours_for(key, ours)
        if mine is None:
            comparisons.append(Comparison(key, float("nan"), float("nan"), 0.0, False, "not produced"))
            continue
        comparisons.append(compare(key, mine, ref, refs))
    return comparisons


def baseline_report(fixture: str, manifest: Mapping[str, Any], refs: Mapping[str, np.ndarray],
                    conv_impl: str = "auto") -> ParityReport:
    """Runs a loaded baseline fixture and compares every stored output."""
    ours = run_baseline_model(manifest, refs, conv_impl)
    return ParityReport(fixture, baseline_model_name(manifest), compare_outputs(ours, refs))


def check_baseline_fixture(json_path: str | pathlib.Path, conv_impl: str = "auto") -> ParityReport:
    """Runs one baseline fixture (its JSON, the npz beside it) and compares every stored output."""
    manifest, refs = load_fixture(json_path)
    return baseline_report(str(json_path), manifest, refs, conv_impl)
