"""SSL checkpoint -> ASTModel encoder.

An SSL checkpoint is the state dict of a wrapper module: ``encoder.*`` (an ASTModel) plus
SSL-only heads (``projector.*``, ``decoder.*``, ...). We keep the encoder's keys and drop the rest
without needing to know the heads' architecture. Checkpoints saved with transformers 4.x use the
old AST module names (``encoder.layer.N.attention.attention.query``); transformers 5 renames those
to ``layers.N.attention.q_proj`` through its own checkpoint conversion mapping, which
``from_pretrained(state_dict=...)`` applies, so both layouts load without a hand-written table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from pathlib import Path

import torch
from pydantic import BaseModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import ASTConfig, ASTModel

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
BUNDLED_CONFIG = Path(__file__).with_name("ast_base_config.json")
# The patch projection exists in every AST layout; whatever precedes it is the encoder's prefix.
ANCHOR_KEY = "embeddings.patch_embeddings.projection.weight"
ARCHITECTURE_KEYS = (
    "attention_probs_dropout_prob",
    "frequency_stride",
    "hidden_act",
    "hidden_dropout_prob",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "layer_norm_eps",
    "max_length",
    "num_attention_heads",
    "num_hidden_layers",
    "num_mel_bins",
    "patch_size",
    "qkv_bias",
    "time_stride",
)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|encoder\.layer)\.(\d+)\.")


class CheckpointError(ValueError):
    """An SSL checkpoint that cannot become an encoder; the message names the file/key and the fix."""


class EncoderLoadReport(BaseModel):
    checkpoint: str
    config_source: str
    prefix: str
    encoder_keys: int
    dropped: dict[str, int]
    unexpected: list[str]


def architecture_dict(config: ASTConfig | dict) -> dict:
    values = config if isinstance(config, dict) else config.to_dict()
    return {key: values[key] for key in ARCHITECTURE_KEYS if key in values}


def read_ast_config(path: Path) -> ASTConfig:
    """Read only the architecture fields of an AST-style config.json (label maps etc. are ignored)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read AST config {path}: {error}") from error
    if not isinstance(values, dict) or "hidden_size" not in values:
        raise CheckpointError(
            f"{path} is not an AST config.json (no hidden_size); pass --base-config with the encoder's config"
        )
    return ASTConfig(**architecture_dict(values))


def resolve_encoder_config(checkpoint_dir: Path, base_config: Path | None = None) -> tuple[ASTConfig, str]:
    """Checkpoint's config.json, else --base-config, else the bundled AST-base default."""
    own = Path(checkpoint_dir) / "config.json"
    if own.is_file():
        return read_ast_config(own), str(own)
    if base_config is not None:
        if not Path(base_config).is_file():
            raise CheckpointError(f"--base-config {base_config}: no such file")
        return read_ast_config(Path(base_config)), str(base_config)
    return read_ast_config(BUNDLED_CONFIG), "bundled MIT/ast-finetuned-audioset-10-10-0.4593 architecture"


def read_checkpoint(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint_dir = Path(checkpoint_dir)
    weights = checkpoint_dir / WEIGHTS_FILE
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"--ssl-checkpoint {checkpoint_dir}: no such folder")
    if not weights.is_file():
        present = sorted(p.name for p in checkpoint_dir.iterdir())[:10]
        hint = (
            " (found pytorch_model.bin: re-save it as safetensors)" if "pytorch_model.bin" in present else ""
        )
        raise CheckpointError(
            f"--ssl-checkpoint {checkpoint_dir}: no {WEIGHTS_FILE} in it{hint}; found {present}. "
            "Point it at the folder that holds the SSL model.safetensors (e.g. checkpoint-N/)"
        )
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {error}") from error


def checkpoint_fingerprint(checkpoint_dir: Path, base_config: Path | None) -> str:
    """Size and mtime of the weights and of the config that shapes them."""
    parts = []
    for path in (Path(checkpoint_dir) / WEIGHTS_FILE, Path(checkpoint_dir) / "config.json", base_config):
        if path is not None and Path(path).is_file():
            stat = Path(path).stat()
            parts.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def find_encoder_prefix(state_dict: dict[str, torch.Tensor]) -> str:
    anchors = sorted(key[: -len(ANCHOR_KEY)] for key in state_dict if key.endswith(ANCHOR_KEY))
    if not anchors:
        sample = sorted(state_dict)[:5]
        raise CheckpointError(
            f"no AST encoder found in the checkpoint: no key ends with '{ANCHOR_KEY}' (first keys: {sample}); "
            "expected the SSL wrapper's 'encoder.*' keys or bare ASTModel keys"
        )
    # Prefer the wrapper's encoder ('encoder.'), then the shortest prefix (e.g. bare ASTModel keys).
    return "encoder." if "encoder." in anchors else min(anchors, key=len)


def split_encoder(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int], str]:
    """Keep the encoder's tensors (prefix removed); count the dropped ones by their top-level name."""
    prefix = find_encoder_prefix(state_dict)
    encoder, dropped = {}, Counter()
    for key, tensor in state_dict.items():
        if key.startswith(prefix):
            encoder[key[len(prefix):]] = tensor
        else:
            dropped[key.split(".", 1)[0]] += 1
    return encoder, dict(dropped), prefix


def count_layers(encoder_state: dict[str, torch.Tensor]) -> int:
    indices = {int(match.group(1)) for key in encoder_state if (match := _LAYER_INDEX.search(key))}
    return max(indices) + 1 if indices else 0


def load_encoder(checkpoint_dir: Path, base_config: Path | None = None) -> tuple[ASTModel, EncoderLoadReport]:
    """Load the SSL checkpoint's encoder into an ASTModel; fail on any missing or mismatched weight."""
    config, config_source = resolve_encoder_config(checkpoint_dir, base_config)
    encoder_state, dropped, prefix = split_encoder(read_checkpoint(checkpoint_dir))
    layers_in_checkpoint = count_layers(encoder_state)
    if layers_in_checkpoint and layers_in_checkpoint != config.num_hidden_layers:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} has {layers_in_checkpoint} encoder layers but the config "
            f"({config_source}) has num_hidden_layers={config.num_hidden_layers}; pass --base-config with "
            "the config.json the SSL model was built from"
        )
    model, info = ASTModel.from_pretrained(
        None,
        config=config,
        state_dict=encoder_state,
        output_loading_info=True,
        ignore_mismatched_sizes=True,  # we raise our own error below, naming each key and both shapes
    )
    if info["mismatched_keys"]:
        details = "; ".join(
            f"{key}: checkpoint {tuple(ckpt)} vs model {tuple(expected)}"
            for key, ckpt, expected in sorted(info["mismatched_keys"])
        )
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} does not fit the encoder config ({config_source}): {details}. "
            "Pass --base-config with the config.json the SSL model was built from"
        )
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} lacks {len(missing)} encoder weights (e.g. {missing[:5]}); "
            f"they would stay randomly initialised. Is '{prefix}' the encoder, and is the config "
            f"({config_source}) the one it was built from?"
        )
    unexpected = sorted(info["unexpected_keys"])
    if unexpected:
        logger.warning("ignoring %d unexpected encoder keys: %s", len(unexpected), unexpected[:10])
    report = EncoderLoadReport(
        checkpoint=str(checkpoint_dir),
        config_source=config_source,
        prefix=prefix,
        encoder_keys=len(encoder_state),
        dropped=dropped,
        unexpected=unexpected,
    )
    logger.info(
        "loaded %d encoder tensors (prefix %r) from %s; dropped SSL heads %s",
        report.encoder_keys, prefix, checkpoint_dir, dropped,
    )
    return model, report


class EncoderRef(BaseModel):
    """A stripped encoder saved with save_pretrained; the hand-off to the training task."""

    path: str
    report: EncoderLoadReport


def export_encoder(checkpoint_dir: Path, base_config: Path | None, cache_dir: Path) -> tuple[EncoderRef, bool]:
    """Strip the SSL heads once and keep the encoder under cache_dir/encoders/<fingerprint>/.

    Every member of an ensemble starts from the same checkpoint, so the strip runs once. Returns
    the reference and whether it was already there.
    """
    key = checkpoint_fingerprint(checkpoint_dir, base_config)
    root = Path(cache_dir) / "encoders"
    final = root / key
    report_file = final / "load_report.json"
    if report_file.is_file() and (final / WEIGHTS_FILE).is_file():
        return EncoderRef(path=str(final), report=EncoderLoadReport.model_validate_json(report_file.read_text())), True
    encoder, report = load_encoder(checkpoint_dir, base_config)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        encoder.save_pretrained(str(staging), save_original_format=False)
        (staging / "load_report.json").write_text(report.model_dump_json(indent=2))
        if final.exists() and not report_file.is_file():
            shutil.rmtree(final)  # an incomplete leftover; a complete one may be in use by another run
        try:
            os.rename(staging, final)
        except OSError:
            if not report_file.is_file():  # another process won the race with an equivalent encoder
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return EncoderRef(path=str(final), report=report), False
