"""Where and how numbers are computed: device, mixed precision and TF32, and seeding."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from lib.core.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu" or "cuda"
    fp16: bool
    bf16: bool
    # TF32 tensor-core matmuls for float32 work: only ever true on a CUDA GPU that has them (Ampere or newer)
    tf32: bool = False

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


def cuda_has_tf32() -> bool:
    """Whether the current CUDA device has TF32 tensor cores (compute capability 8.0, Ampere, or newer)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def resolve_runtime(device: str = "auto", precision: str = "auto", tf32: bool = False) -> Runtime:
    """Pick the device, mixed precision and TF32; refuse combinations that would silently do nothing.

    tf32 is a wish, granted only where it costs nothing: on a CUDA GPU that has TF32 (never an error).
    """
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("training.device=cuda but no CUDA device is visible; use --device auto or cpu")
    resolved = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
    tf32 = tf32 and resolved == "cuda" and cuda_has_tf32()
    if precision == "auto":
        if resolved == "cpu":
            return Runtime("cpu", fp16=False, bf16=False)
        bf16 = torch.cuda.is_bf16_supported()
        return Runtime("cuda", fp16=not bf16, bf16=bf16, tf32=tf32)
    if precision == "fp16" and resolved == "cpu":
        # transformers 5 silently trains in fp32 when fp16=True on CPU (the notebook's setting).
        raise ConfigError("training.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32 (or auto)")
    if precision == "bf16" and resolved == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.precision=bf16 is not supported by this GPU; use fp16 or auto")
    return Runtime(resolved, fp16=precision == "fp16", bf16=precision == "bf16", tf32=tf32)


def apply_tf32(runtime: Runtime) -> None:
    """Set this process's CUDA float32 matmul mode to the runtime's, as TrainingArguments(tf32=...) does.

    Called before anything of a run computes on the GPU (the trunk cache is built before Trainer
    starts); through the same transformers function, so the two never mix torch's old and new TF32 APIs.
    """
    if runtime.device != "cuda":
        return  # CPU math is left as torch set it
    from transformers.utils.import_utils import enable_tf32

    enable_tf32(runtime.tf32)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
