"""Where and how numbers are computed: device and mixed precision, and seeding."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from lib.config import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu" or "cuda"
    fp16: bool
    bf16: bool

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.float16 if self.fp16 else torch.bfloat16 if self.bf16 else None


def check_portable(device: str = "auto", precision: str = "auto") -> None:
    """Refuse device/precision pairs that are wrong on every machine, without looking at this one's GPUs.

    The parent of a scale-out ensemble runs where no GPU may be: it validates with this, and each
    member resolves its Runtime (resolve_runtime) on the worker that trains it.
    """
    if precision == "fp16" and device == "cpu":
        # transformers 5 silently trains in fp32 when fp16=True on CPU (the notebook's setting).
        raise ConfigError("training.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32 (or auto)")


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Pick the device and mixed precision; refuse combinations that would silently do nothing."""
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("training.device=cuda but no CUDA device is visible; use --device auto or cpu")
    resolved = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
    if precision == "auto":
        if resolved == "cpu":
            return Runtime("cpu", fp16=False, bf16=False)
        bf16 = torch.cuda.is_bf16_supported()
        return Runtime("cuda", fp16=not bf16, bf16=bf16)
    if precision == "fp16" and resolved == "cpu":
        # transformers 5 silently trains in fp32 when fp16=True on CPU (the notebook's setting).
        raise ConfigError("training.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32 (or auto)")
    if precision == "bf16" and resolved == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.precision=bf16 is not supported by this GPU; use fp16 or auto")
    return Runtime(resolved, fp16=precision == "fp16", bf16=precision == "bf16")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
