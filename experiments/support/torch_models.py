"""PyTorch reference modules of the official CIFAR AIB models (needs the torch extra).

Written from the method notes (``METHOD.md`` sections 1-3) with the official layer order
and ``state_dict`` names, so an official checkpoint, a parity fixture's synthetic
weights or a Flax export (``interop.to_state_dict``) loads with ``strict=True``:

* :class:`VGGAIB` = ``Vgg16_bn_lrn_VANet`` (``qt_num > 0``: ``..._QT``), LTPA VGG trunk;
* :class:`WideResNetAIB` = ``WideResNet`` / ``WideResNet_QT`` (WRN-28-10, ABN head); like
  the official class it registers modules twice (``block3`` is ``encode.0``, ``bn1`` is
  ``encode.1``, the ABN branch is ``att_module_mu.0/1/2/3/5/6``), so the state_dict holds
  both keys of each shared tensor;
* :class:`VGGPlain`, :class:`WideResNetPlain`: the baselines ``vgg_plain`` / ``wrn_plain``.

``forward(x, num_sample=1, noise=True)`` returns what the official forward returns in
training: ``(logits, kl)`` and, for QT models, ``(logits, kl, vq_loss, commit_loss)``
(the plain models return ``(logits,)``), with the official sample-major repeat, the
reparameterisation ``mu + eps * std`` and the KL with scale ``exp(std)``.
``noise=False`` sets ``eps = 0`` (the fixtures' zero-noise protocol); ``return_parts=True``
returns a dict of every intermediate instead. :func:`loss` is the official training loss.

Only the benchmark (``experiments/benchmarks/train_step.py``) and the torch tests import
this module; the library itself never needs torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

Tensor = torch.Tensor
LN2 = math.log(2.0)


# -- shared pieces -----------------------------------------------------------------------------------
class Flatten(nn.Module):
    """(b, ...) -> (b, -1), as the official ``Flatten``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1)


class VectorQuantizer(nn.Module):
    """The official scalar quantiser: anchors ``weight`` (1, Q), nearest anchor, straight-through.

    Returns ``(quantized, vq_loss, commit_loss)`` with ``vq = mse(q, sg(a))`` (the
    codebook term) and ``commit = mse(a, sg(q))``, in the official order.
    """

    def __init__(self, num_anchors: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.0, 1.0, num_anchors).unsqueeze(0))

    def forward(self, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        index = self.assign(a)
        q = self.weight[0].index_select(0, index.reshape(-1)).view_as(a)
        vq_loss = F.mse_loss(q, a.detach())
        commit_loss = F.mse_loss(a, q.detach())
        return a + (q - a).detach(), vq_loss, commit_loss

    def assign(self, a: Tensor) -> Tensor:
        """Index of the nearest anchor of every value of ``a`` (argmin of the squared distance)."""
        return torch.pow(a.unsqueeze(-1) - self.weight, 2).min(-1)[1]


def reparametrize_n(mu: Tensor, std: Tensor, n: int = 1, noise: bool = True) -> Tensor:
    """The official ``mu + eps * std``, expanded to (n, ...) when ``n != 1``; ``noise=False``: eps = 0."""
    if n != 1:
        mu = mu.expand(n, *mu.shape)
        std = std.expand(n, *std.shape)
    eps = torch.randn_like(std) if noise else torch.zeros_like(std)
    return mu + eps * std


def kl_official(mu: Tensor, std: Tensor) -> Tensor:
    """Per-row official KL: ``Independent(Normal(mu, exp(std)), 1)`` from ``N(0, I)``; (rows, K) -> (rows,)."""
    posterior = Independent(Normal(loc=mu, scale=torch.exp(std)), 1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(std)), 1)
    return kl_divergence(posterior, prior)


class _AIBBase(nn.Module):
    """The generic AIB forward; subclasses provide front(), att_module_mu/std, encode, decode and emb (or None)."""

    K: int
    att_dim: int = 16
    info_factor: float = 1.0  # the official c in beta * c * KL
    emb: VectorQuantizer | None

    def front(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, num_sample: int = 1, noise: bool = True, return_parts: bool = False
                ) -> tuple[Tensor, ...] | dict[str, Tensor]:
        b, n, hw = x.shape[0], num_sample, self.att_dim * self.att_dim
        f = self.front(x)
        att_logit = f
        mu_layers = list(self.att_module_mu)
        for layer in mu_layers[:-1]:
            att_logit = layer(att_logit)
        att_mu = mu_layers[-1](att_logit)  # the Sigmoid
        att_std_pre = self.att_module_std(att_mu)
        att_mu_flat = att_mu.view(b, -1)
        att_std = F.softplus(att_std_pre.view(b, -1) - 5, beta=1)
        att_mask = reparametrize_n(att_mu_flat, att_std, n, noise).view(n, b, hw)  # sample-major
        vq_loss = commit_loss = None
        if self.emb is not None:
            att_used, vq_loss, commit_loss = self.emb(att_mask.view(n * b, hw))
            mask = att_used.view(-1, self.att_dim, self.att_dim).unsqueeze(1)
        else:
            mask = att_mask.view(-1, self.att_dim, self.att_dim).unsqueeze(1)
            mask = F.interpolate(mask, size=[f.size(2), f.size(3)])  # official no-op nearest resize
        f_rep = f.repeat(n, 1, 1, 1) if n > 1 else f  # row s*b + i = sample s of image i
        f_att = f_rep + torch.mul(f_rep, mask)
        stats = self.encode(f_att)
        mu = stats[:, :self.K]
        std = F.softplus(stats[:, self.K:] - 5, beta=1)
        z = reparametrize_n(mu, std, n, noise).view(n, n, b, self.K)
        logits = self.decode(z).mean(0).mean(0)
        kl_rows = kl_official(mu, std)
        kl = torch.mean(kl_rows)
        if return_parts:
            parts = {"features": f, "att_mu_logit": att_logit, "att_mu": att_mu, "att_std_pre": att_std_pre,
                     "att_std": att_std.view_as(att_mu), "att_sample": att_mask.view(n * b, 1, *att_mu.shape[2:]),
                     "att_used": mask, "enc_stats": stats, "mu_z": mu, "std_z": std, "logits": logits,
                     "kl": kl, "kl_rows": kl_rows}
            if self.emb is not None:
                parts.update(vq_loss=vq_loss, commit_loss=commit_loss, anchors=self.emb.weight.detach().view(-1),
                             att_q_index=self.emb.assign(att_mask.view(n * b, hw)).view(n * b, *att_mu.shape[2:]))
            return parts
        if self.emb is not None:
            return logits, kl, vq_loss, commit_loss
        return logits, kl


# -- VGG (VGG-backbone-32/cifar_va.py, blocks.py) ----------------------------------------------------
class ConvBlock(nn.Module):
    """LTPA ConvBlock: ``op`` = num_conv x [Conv3x3(bias), BN, ReLU (, MaxPool 2 after each if pool)]."""

    def __init__(self, in_features: int, out_features: int, num_conv: int, pool: bool = False) -> None:
        super().__init__()
        widths = [in_features] + [out_features] * num_conv
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=True), nn.BatchNorm2d(cout), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, padding=0))
        self.op = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


def _vgg_features() -> nn.Sequential:
    return nn.Sequential(ConvBlock(3, 64, 2), ConvBlock(64, 128, 2), ConvBlock(128, 256, 3),
                         nn.MaxPool2d(kernel_size=2, stride=2))


def _vgg_encode_trunk() -> list[nn.Module]:
    """encode.0-7: block4, pool, block5, pool, block6 (pool after each conv), dense 1x1 conv, ReLU, Flatten."""
    return [ConvBlock(256, 512, 3), nn.MaxPool2d(2, 2), ConvBlock(512, 512, 3), nn.MaxPool2d(2, 2),
            ConvBlock(512, 512, 2, pool=True), nn.Conv2d(512, 512, kernel_size=1, padding=0, bias=True),
            nn.ReLU(inplace=True), Flatten()]


class VGGAIB(_AIBBase):
    """Official ``Vgg16_bn_lrn_VANet`` (``qt_num > 0``: ``Vgg16_bn_lrn_VANet_QT``) for 32x32 inputs."""

    info_factor = 0.5

    def __init__(self, num_classes: int = 10, K: int = 256, qt_num: int = 0) -> None:
        super().__init__()
        self.K = K
        self.emb = VectorQuantizer(qt_num) if qt_num else None  # registered first, as in the QT class
        self.features = _vgg_features()
        self.encode = nn.Sequential(*_vgg_encode_trunk(), nn.Linear(512, 2 * K))
        self.att_module_mu = nn.Sequential(nn.Conv2d(256, 1, 3, stride=1, padding=1), nn.Sigmoid())
        self.att_module_std = nn.Sequential(nn.Conv2d(1, 1, 3, stride=1, padding=1))
        self.decode = nn.Sequential(nn.Linear(K, K), nn.ReLU(True), nn.Linear(K, num_classes))
        init_vgg_(self)

    def front(self, x: Tensor) -> Tensor:
        return self.features(x)


class VGGPlain(nn.Module):
    """The ``vgg_plain`` baseline: ``features``, ``encode.0-7`` and a Linear ``classifier``."""

    info_factor = 0.0

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = _vgg_features()
        self.encode = nn.Sequential(*_vgg_encode_trunk())
        self.classifier = nn.Linear(512, num_classes)
        init_vgg_(self)

    def forward(self, x: Tensor, num_sample: int = 1, noise: bool = True) -> tuple[Tensor]:
        return (self.classifier(self.encode(self.features(x))),)


def init_vgg_(model: nn.Module) -> None:
    """LTPA ``xavierUniform``: conv/linear Xavier-uniform gain sqrt(2), biases 0, BN scale U(0, 1), BN bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight, gain=math.sqrt(2.0))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)


# -- Wide-ResNet (WRN-backbone-32/models/cifar/wrn_va.py) -------------------------------------------
class BasicBlock(nn.Module):
    """Pre-activation block; with a width change both the conv path and the 1x1 shortcut read relu(bn1(x))."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (None if self.equal_in_out  # official name
                             else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return torch.add(x if self.equal_in_out else self.convShortcut(act), out)


class NetworkBlock(nn.Module):
    """``layer`` = ``nb_layers`` BasicBlocks; the first carries the stride and the width change."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                stride if i == 0 else 1, drop_rate) for i in range(nb_layers)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _wrn_trunk(model: nn.Module, depth: int, widen_factor: int, drop_rate: float) -> list[int]:
    """Registers conv1, block1-3, bn1 and the shared ReLU on ``model``; returns the widths."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    model.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
    model.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
    model.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
    model.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
    model.bn1 = nn.BatchNorm2d(widths[3])
    model.relu = nn.ReLU(inplace=True)
    return widths


class WideResNetAIB(_AIBBase):
    """Official ``WideResNet`` (``qt_num > 0``: ``WideResNet_QT``): WRN-depth-widen with the ABN mean head."""

    info_factor = 1.0

    def __init__(self, num_classes: int = 10, depth: int = 28, widen_factor: int = 10, drop_rate: float = 0.3,
                 K: int = 512, qt_num: int = 0) -> None:
        super().__init__()
        self.K = K
        widths = _wrn_trunk(self, depth, widen_factor, drop_rate)
        n = (depth - 4) // 6
        self.att_block3 = NetworkBlock(n, widths[2], widths[3], 1, drop_rate)
        self.bn_att = nn.BatchNorm2d(widths[3])
        self.att_conv = nn.Conv2d(widths[3], num_classes, kernel_size=1, padding=0, bias=False)
        self.bn_att2 = nn.BatchNorm2d(num_classes)
        self.att_conv3 = nn.Conv2d(num_classes, 1, kernel_size=3, padding=1, bias=False)
        self.bn_att3 = nn.BatchNorm2d(1)
        self.sigmoid = nn.Sigmoid()
        # The same module objects registered a second time, as the official class does.
        self.att_module_mu = nn.Sequential(self.att_block3, self.bn_att, self.att_conv, self.bn_att2, self.relu,
                                           self.att_conv3, self.bn_att3, self.sigmoid)
        self.att_module_std = nn.Sequential(nn.Conv2d(1, 1, 3, stride=1, padding=1))
        self.encode = nn.Sequential(self.block3, self.bn1, self.relu, nn.AdaptiveAvgPool2d((1, 1)), Flatten(),
                                    nn.Linear(widths[3], 2 * K))
        self.decode = nn.Sequential(nn.ReLU(True), nn.Linear(K, num_classes))
        self.emb = VectorQuantizer(qt_num) if qt_num else None  # registered last, as in WideResNet_QT
        init_wrn_(self)

    def front(self, x: Tensor) -> Tensor:
        return self.block2(self.block1(self.conv1(x)))


class WideResNetPlain(nn.Module):
    """The ``wrn_plain`` baseline: conv1, block1-3, BN, ReLU, global mean, Linear ``fc``."""

    info_factor = 0.0

    def __init__(self, num_classes: int = 10, depth: int = 28, widen_factor: int = 10,
                 drop_rate: float = 0.3) -> None:
        super().__init__()
        widths = _wrn_trunk(self, depth, widen_factor, drop_rate)
        self.fc = nn.Linear(widths[3], num_classes)
        init_wrn_(self)

    def forward(self, x: Tensor, num_sample: int = 1, noise: bool = True) -> tuple[Tensor]:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return (self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)),)


def init_wrn_(model: nn.Module) -> None:
    """Official WRN init: conv N(0, sqrt(2 / (k*k*out))), BN 1/0, Linear bias 0 (weights PyTorch default).

    Like the official loop it reaches the std conv too; the official code then keeps that
    conv's default bias (only Linear biases are zeroed).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# -- construction and loss ---------------------------------------------------------------------------
MODELS = {  # registered name -> (class, constructor keywords)
    "vgg_aib": (VGGAIB, {"K": 256}),
    "vgg_aib_qt": (VGGAIB, {"K": 256, "qt_num": 20}),
    "wrn_aib": (WideResNetAIB, {"K": 512}),
    "wrn_aib_qt": (WideResNetAIB, {"K": 512, "qt_num": 50}),
    "vgg_plain": (VGGPlain, {}),
    "wrn_plain": (WideResNetPlain, {}),
}

_FIXTURE_CLASSES = {"Vgg16_bn_lrn_VANet": VGGAIB, "Vgg16_bn_lrn_VANet_QT": VGGAIB,
                    "WideResNet": WideResNetAIB, "WideResNet_QT": WideResNetAIB}


def create_torch_model(name: str, num_classes: int = 10, **overrides: Any) -> nn.Module:
    """The reference module of a registered model name (``vgg_aib``, ``wrn_aib_qt``, ``vgg_plain``...)."""
    if name not in MODELS:
        raise ValueError(f"no torch reference for {name!r}; available: {', '.join(MODELS)}")
    cls, kwargs = MODELS[name]
    return cls(num_classes, **{**kwargs, **overrides})


def model_from_manifest(manifest: dict[str, Any]) -> nn.Module:
    """The reference module with a parity fixture's constructor arguments (CIFAR fixtures only)."""
    cls = _FIXTURE_CLASSES.get(manifest["official"]["class_name"])
    if cls is None or "CUB" in manifest["official"]["file"]:
        raise ValueError(f"no torch reference for {manifest['official']['class_name']} "
                         f"({manifest['official']['file']})")
    args = manifest.get("constructor_args", {})
    return cls(int(manifest["num_classes"]), K=int(manifest["latent_dim_K"]), qt_num=int(args.get("qt_num") or 0))


def loss(model: nn.Module, output: tuple[Tensor, ...], targets: Tensor, beta: float = 1e-2,
         vq_coef: float = 0.4, commit_coef: float = 0.1) -> tuple[Tensor, dict[str, Tensor]]:
    """The official training loss of a forward's output tuple: total and parts (bits).

    ``CE/ln2 + beta * c * KL/ln2 (+ vq_coef * vq + commit_coef * commit)`` with the
    model's ``info_factor`` c (0.5 VGG, 1 WRN); the plain models get ``CE/ln2``.
    """
    parts = {"class_loss": F.cross_entropy(output[0], targets).div(LN2)}
    total = parts["class_loss"]
    if len(output) > 1:
        parts["info_loss"] = model.info_factor * output[1].mean().div(LN2)
        total = total + beta * parts["info_loss"]
    if len(output) > 3:
        parts["qt_loss"] = vq_coef * output[2] + commit_coef * output[3]
        total = total + parts["qt_loss"]
    parts["total"] = total
    return total, parts
