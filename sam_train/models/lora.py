"""Low-rank adapters (LoRA, Hu et al. 2021) for the `nn.Linear` layers of any plain model.

`LoraLinear` *is* an `nn.Linear` that keeps the wrapped layer's `weight` and `bias` under
their own names and adds `lora_A [r, in]`, `lora_B [out, r]` and a `lora_scale` (alpha / r)
beside them, so a state dict stays the base model's plus three keys per adapted layer:
the key maps, `init_from` and the official-layout exports read it unchanged (Hugging Face
`peft` renames the base to `<layer>.base_layer.weight` instead). The maths is peft's:
`y = x W^T + b + scale * dropout(x) A^T B^T`, A Kaiming-uniform, B zero (the adapted model
starts as the base model).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_train.errors import UserError

LORA_SUFFIXES = (".lora_A", ".lora_B", ".lora_scale")


class LoraError(UserError):
    """Adapter settings that cannot work; the message names the `peft.*` key and the fix."""


@dataclass
class LoraConfig:
    """Where and how large the adapters are (the values a run uses: conf/peft/lora.yaml).

    Args:
        targets: module-name patterns; a pattern matches a module whose name equals it or ends
            with `.<pattern>` (peft's rule), `*` as a wildcard (`mask_decoder.*.q_proj`).
            `attn.qkv`: every image-encoder block's fused q/k/v projection (SAMed, micro-sam).
        rank: r, the inner size of each adapter.
        alpha: the update is scaled by alpha / r.
        dropout: dropout on the adapter's input while training.
    """

    targets: list[str]
    rank: int
    alpha: float
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.targets = [str(t) for t in self.targets]
        if self.rank < 1:
            raise LoraError(f"peft.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoraError(f"peft.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise LoraError("peft.targets is empty; name the layers to adapt, e.g. [attn.qkv]")


class LoraLinear(nn.Linear):
    """An `nn.Linear` plus a trainable low-rank update; shares the base layer's parameters."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # [out, in]
        self.bias = base.bias
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("lora_scale", torch.tensor(alpha / rank, dtype=torch.float32))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # [..., out]
        return F.linear(x, self.weight, self.bias) + update * self.lora_scale.to(x.dtype)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` computing the same function (eval mode): W + scale * B A."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out = out.to(self.weight.device, self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.lora_scale * (self.lora_B @ self.lora_A))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_A.shape[0]}"


def matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _suggest(model: nn.Module) -> str:
    """Distinct Linear-layer suffixes (`attn.qkv`, `mlp.fc1`, ...), the patterns that would fit."""
    suffixes = sorted({".".join(n.split(".")[-2:]) for n in linear_names(model)})
    return ", ".join(s for s in suffixes if not s.split(".")[0].isdigit())


def add_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Replace every `nn.Linear` whose name matches a pattern of `cfg.targets` by a
    `LoraLinear` (in place); returns the adapted names. A pattern that matches no Linear layer
    raises ValueError naming it and the patterns that would fit."""
    names = linear_names(model)
    for pattern in cfg.targets:
        if not any(matches(n, pattern) for n in names):
            raise LoraError(
                f"peft.targets entry {pattern!r} matches no Linear layer of the model; "
                f"layers that fit: {_suggest(model)}"
            )
    adapted = [n for n in names if any(matches(n, p) for p in cfg.targets)]
    for name in adapted:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if not isinstance(base, LoraLinear):
            setattr(parent, child, LoraLinear(base, cfg.rank, cfg.alpha, cfg.dropout))
    return adapted


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain `nn.Linear`s back (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.merged())
    return model


def is_lora_key(key: str) -> bool:
    return key.endswith(LORA_SUFFIXES)


def adapted_layers(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the adapted layers in a state dict (those with a `.lora_A` tensor)."""
    return [k.removesuffix(".lora_A") for k in sd if k.endswith(".lora_A")]


def merge_lora_state(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with adapters -> the same function as plain weights: each adapted layer's
    `weight` becomes `weight + scale * B @ A` and the adapter tensors are dropped."""
    out = {k: v for k, v in sd.items() if not is_lora_key(k)}
    for layer in adapted_layers(sd):
        a, b = sd[f"{layer}.lora_A"].float(), sd[f"{layer}.lora_B"].float()  # [r, in], [out, r]
        w = sd[f"{layer}.weight"]
        out[f"{layer}.weight"] = (w.float() + sd[f"{layer}.lora_scale"].float() * (b @ a)).to(
            w.dtype
        )
    return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared parameters counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


def lora_parameter_names(model: nn.Module) -> Sequence[str]:
    return [n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))]
