"""SSL checkpoint -> ASTModel encoder.

An SSL checkpoint is the state dict of a wrapper module: ``encoder.*`` (an ASTModel) plus
SSL-only heads (``projector.*``, ``decoder.*``, ...). We keep the encoder's keys and drop the rest
without needing to know the heads' architecture. Checkpoints saved with transformers 4.x use the
old AST module names (``encoder.layer.N.attention.attention.query``); transformers 5 renames those
to ``layers.N.attention.q_proj`` through its own checkpoint conversion mapping, which
``from_pretrained(state_dict=...)`` applies, so both layouts load without a hand-written table.

The encoder can be loaded for a shorter or longer input than it was pretrained on (``max_frames``):
the positional embeddings of its patch grid are then cut or interpolated along time, as the AST and
SSAST reference code does when fine-tuning on clips of another length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import torch
from pydantic import BaseModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import ASTConfig, ASTModel

from lib.core.errors import CheckpointError
from lib.core.guards import name_list, nonfinite_tensors
from lib.core.hashing import digest
from lib.core.layout import ENCODERS_FOLDER, REPORT_FILE, WEIGHTS_FILE
from lib.core.staging import build_lock, file_sizes_match, record_file_sizes, staged_folder
from lib.model.classifier import SPECIAL_TOKENS

logger = logging.getLogger(__name__)

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
POSITION_KEY = "embeddings.position_embeddings"


class PositionGrid(BaseModel):
    """How the patch grid's positional embeddings were fitted to the feature length."""

    checkpoint: tuple[int, int]  # (frequency, time) patches the checkpoint was trained with
    encoder: tuple[int, int]  # (frequency, time) patches of the loaded encoder
    max_frames: int
    adaptation: str  # "none", "centre_cut" or "bilinear"


class EncoderLoadReport(BaseModel):
    checkpoint: str
    config_source: str
    prefix: str
    encoder_keys: int
    dropped: dict[str, int]
    unexpected: list[str]
    position_grid: PositionGrid


def architecture_dict(config: ASTConfig | dict) -> dict:
    values = config if isinstance(config, dict) else config.to_dict()
    return {key: values[key] for key in ARCHITECTURE_KEYS if key in values}


def base_config_fix(base_config: Path | None) -> str:
    """What to do about an encoder config that does not fit: true whether or not --base-config was given."""
    if base_config is None:
        return (
            "pass --base-config (model.base_config) with the config.json the SSL model was built from; "
            "it takes precedence over the checkpoint folder's config.json"
        )
    return (
        f"--base-config (model.base_config) is {base_config}: point it at the config.json the SSL model "
        "was built from"
    )


def read_ast_config(path: Path, fix: str = "pass --base-config with the encoder's config.json") -> ASTConfig:
    """Read only the architecture fields of an AST-style config.json (label maps etc. are ignored)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read AST config {path}: {error}; {fix}") from error
    if not isinstance(values, dict) or "hidden_size" not in values:
        raise CheckpointError(f"{path} is not an AST config.json (no hidden_size); {fix}")
    return ASTConfig(**architecture_dict(values))


def encoder_config_file(checkpoint_dir: Path, base_config: Path | None = None) -> Path | None:
    """The config.json that describes the encoder: --base-config, else the checkpoint's, else None (bundled).

    An explicit --base-config wins: it is the way to correct a checkpoint folder whose own
    config.json is wrong, which would otherwise always shadow it.
    """
    if base_config is not None:
        if not Path(base_config).is_file():
            raise CheckpointError(
                f"--base-config (model.base_config) {base_config}: no such file; pass the AST config.json the SSL "
                "model was built from, or leave it unset to use the checkpoint folder's config.json"
            )
        return Path(base_config)
    own = Path(checkpoint_dir) / "config.json"
    return own if own.is_file() else None


def resolve_encoder_config(checkpoint_dir: Path, base_config: Path | None = None) -> tuple[ASTConfig, str]:
    """--base-config, else the checkpoint's config.json, else the bundled AST-base default; and its source."""
    path = encoder_config_file(checkpoint_dir, base_config)
    if path is None:
        return read_ast_config(BUNDLED_CONFIG), "bundled MIT/ast-finetuned-audioset-10-10-0.4593 architecture"
    own = Path(checkpoint_dir) / "config.json"
    if base_config is not None and own.is_file():
        logger.info("encoder config: %s (--base-config) takes precedence over %s", path, own)
    return read_ast_config(path, base_config_fix(base_config)), str(path)


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
    """The bytes of the weights and of the config that shapes them (the one actually used): the same checkpoint
    moved, copied or published again keeps its key (why: docs/decisions.md, "The encoder cache key")."""
    config_file = encoder_config_file(checkpoint_dir, base_config)
    parts = []
    for path in (Path(checkpoint_dir) / WEIGHTS_FILE, config_file):
        if path is not None and Path(path).is_file():
            with open(path, "rb") as handle:  # streamed: an AST-base encoder is ~350 MB, about a second
                parts.append(hashlib.file_digest(handle, "sha256").hexdigest())
    parts.append(f"config={'bundled' if config_file is None else 'file'};config-precedence=base-first;content")
    return digest("|".join(parts))


def stat_fingerprint(checkpoint_dir: Path, base_config: Path | None) -> str:
    """The key astft 0.1.0 gave a checkpoint (resolved path, size and mtime of its files): only to resume work
    dirs that 0.1.0 started (EncoderRef.legacy_key)."""
    config_file = encoder_config_file(checkpoint_dir, base_config)
    parts = []
    for path in (Path(checkpoint_dir) / WEIGHTS_FILE, config_file):
        if path is not None and Path(path).is_file():
            stat = Path(path).stat()
            parts.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    parts.append(f"config={'bundled' if config_file is None else 'file'};config-precedence=base-first")
    return digest("|".join(parts))


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


def patch_grid(config: ASTConfig) -> tuple[int, int]:
    """(frequency, time) patches of an AST input, as transformers' ASTEmbeddings.get_shape counts them."""
    return (
        (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1,
        (config.max_length - config.patch_size) // config.time_stride + 1,
    )


def config_for_frames(config: ASTConfig, max_frames: int | None) -> ASTConfig:
    """The encoder config for inputs of max_frames frames; None keeps the config's own max_length."""
    if max_frames is None or max_frames == config.max_length:
        return config
    if max_frames < config.patch_size:
        raise CheckpointError(
            f"features.max_frames is {max_frames}, shorter than one {config.patch_size}-frame patch of the "
            f"encoder; use at least {config.patch_size} (128 fits 1 s clips), or null for the encoder's "
            f"own max_length ({config.max_length})"
        )
    return ASTConfig(**{**architecture_dict(config), "max_length": max_frames})


def fit_position_embeddings(
    position_embeddings: torch.Tensor, frequency_patches: int, time_patches: int
) -> tuple[torch.Tensor, str]:
    """Fit the patch grid's positional embeddings to `time_patches`, keeping the cls/dist tokens.

    Patch tokens are frequency-major: ASTPatchEmbeddings flattens the conv output
    (batch, hidden, frequency, time), so token 2 + f * T + t is patch (f, t). As in the AST and
    SSAST reference code (``ASTModel.__init__``), a shorter time axis keeps the centred columns
    ``[T/2 - t/2, T/2 - t/2 + t)`` and a longer one is interpolated bilinearly. The frequency axis
    never changes here: features always use the encoder's own mel bins.
    Returns the new tensor and "none", "centre_cut" or "bilinear".
    """
    special, patches = position_embeddings[:, :SPECIAL_TOKENS], position_embeddings[:, SPECIAL_TOKENS:]
    hidden = position_embeddings.shape[-1]
    source_time = patches.shape[1] // frequency_patches
    if source_time == time_patches:
        return position_embeddings, "none"
    grid = patches.reshape(1, frequency_patches, source_time, hidden).permute(0, 3, 1, 2)
    if time_patches < source_time:
        start = source_time // 2 - time_patches // 2
        grid, adaptation = grid[..., start : start + time_patches], "centre_cut"
    else:
        # interpolate in float32: half-precision bilinear is not available on every device
        resized = torch.nn.functional.interpolate(
            grid.float(), size=(frequency_patches, time_patches), mode="bilinear", align_corners=False
        )
        grid, adaptation = resized.to(position_embeddings.dtype), "bilinear"
    patches = grid.permute(0, 2, 3, 1).reshape(1, frequency_patches * time_patches, hidden)
    return torch.cat([special, patches], dim=1).contiguous(), adaptation


def _check_position_tokens(
    encoder_state: dict[str, torch.Tensor], config: ASTConfig, checkpoint_dir: Path, config_source: str, fix: str
) -> None:
    """The checkpoint's token count must be the grid its config describes, or the cut would scramble it."""
    position = encoder_state.get(POSITION_KEY)
    if position is None or position.ndim != 3:
        return  # reported as a missing or mismatched weight by the load itself
    frequency, time = patch_grid(config)
    tokens = position.shape[1]
    if tokens == SPECIAL_TOKENS + frequency * time:
        return
    patches = tokens - SPECIAL_TOKENS
    looks_like = (
        f"; it looks like {frequency} x {patches // frequency} patches, i.e. another max_length"
        if patches > 0 and patches % frequency == 0
        else ""
    )
    raise CheckpointError(
        f"checkpoint {checkpoint_dir} does not fit the encoder config ({config_source}): "
        f"{POSITION_KEY}: checkpoint {tuple(position.shape)} has {tokens} tokens, but num_mel_bins="
        f"{config.num_mel_bins}, max_length={config.max_length}, patch_size={config.patch_size} and strides "
        f"{config.frequency_stride}/{config.time_stride} make {SPECIAL_TOKENS} + {frequency} x {time} = "
        f"{SPECIAL_TOKENS + frequency * time}{looks_like}. To fix: {fix}"
    )


def load_encoder(
    checkpoint_dir: Path, base_config: Path | None = None, max_frames: int | None = None
) -> tuple[ASTModel, EncoderLoadReport]:
    """Load the SSL checkpoint's encoder into an ASTModel; fail on any missing or mismatched weight.

    With max_frames set, the encoder takes inputs of that many frames (its config's max_length
    becomes max_frames) and its positional embeddings are cut or interpolated to match.
    """
    config, config_source = resolve_encoder_config(checkpoint_dir, base_config)
    encoder_state, dropped, prefix = split_encoder(read_checkpoint(checkpoint_dir))
    bad = nonfinite_tensors(encoder_state)
    if bad:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} has NaN or inf values in {len(bad)} encoder tensors "
            f"({name_list([prefix + name for name in bad])}); "
            "the SSL run diverged or the file is corrupt. Use an earlier checkpoint of that run"
        )
    layers_in_checkpoint = count_layers(encoder_state)
    if layers_in_checkpoint and layers_in_checkpoint != config.num_hidden_layers:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} has {layers_in_checkpoint} encoder layers but the config "
            f"({config_source}) has num_hidden_layers={config.num_hidden_layers}; {base_config_fix(base_config)}"
        )
    _check_position_tokens(encoder_state, config, checkpoint_dir, config_source, base_config_fix(base_config))
    target = config_for_frames(config, max_frames)
    frequency, time = patch_grid(target)
    adaptation = "none"
    if POSITION_KEY in encoder_state and encoder_state[POSITION_KEY].ndim == 3:
        encoder_state[POSITION_KEY], adaptation = fit_position_embeddings(encoder_state[POSITION_KEY], frequency, time)
    model, info = ASTModel.from_pretrained(
        None,
        config=target,
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
            f"To fix: {base_config_fix(base_config)}"
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
        position_grid=PositionGrid(
            checkpoint=patch_grid(config),
            encoder=(frequency, time),
            max_frames=target.max_length,
            adaptation=adaptation,
        ),
    )
    logger.info(
        "loaded %d encoder tensors (prefix %r) from %s; dropped SSL heads %s; patch grid %s -> %s (%s)",
        report.encoder_keys, prefix, checkpoint_dir, heads_text(dropped), patch_grid(config), (frequency, time),
        adaptation,
    )
    return model, report


def heads_text(dropped: dict[str, int]) -> str:
    """{'decoder': 4, 'projector': 2} as "decoder (4 tensors), projector (2)": what a log line shows."""
    if not dropped:
        return "none"
    return ", ".join(f"{head} ({count} tensor{'s' * (count != 1)})" for head, count in dropped.items())


class EncoderRef(BaseModel):
    """A stripped encoder saved with save_pretrained; the hand-off to the training task."""

    path: str  # <cache_dir>/encoders/<key>: its name is the encoder's key
    report: EncoderLoadReport
    legacy_key: str | None = None  # the key astft 0.1.0 gave the same checkpoint at the same place


def export_encoder(
    checkpoint_dir: Path, base_config: Path | None, cache_dir: Path, max_frames: int | None = None
) -> tuple[EncoderRef, bool]:
    """Strip the SSL heads once and keep the encoder under cache_dir/encoders/<key>/.

    Every member of an ensemble starts from the same checkpoint, so the strip runs once per
    checkpoint and max_frames (the key covers both). Returns the reference and whether it was
    already there. Like the feature and trunk caches, it is built in a staging folder and renamed
    in, and a meta.json of file sizes, written last, proves it whole: a truncated or partial
    encoder is rebuilt, never loaded.
    """
    source = checkpoint_fingerprint(checkpoint_dir, base_config)
    key = digest(f"{source}|max_frames={max_frames}")
    legacy_key = digest(f"{stat_fingerprint(checkpoint_dir, base_config)}|max_frames={max_frames}")
    root = Path(cache_dir) / ENCODERS_FOLDER
    final = root / key
    report_file = final / REPORT_FILE
    with build_lock(final, "encoder cache"):  # two runs building it at once: one builds, the other waits, then reuses
        if file_sizes_match(final, key):
            report = EncoderLoadReport.model_validate_json(report_file.read_text())
            return EncoderRef(path=str(final), report=report, legacy_key=legacy_key), True
        encoder, report = load_encoder(checkpoint_dir, base_config, max_frames)
        with staged_folder(root, key, file_sizes_match, "encoder cache") as staging:
            encoder.save_pretrained(str(staging), save_original_format=False)
            (staging / REPORT_FILE).write_text(report.model_dump_json(indent=2))
            record_file_sizes(staging, key)  # last: marks the cache complete
    return EncoderRef(path=str(final), report=report, legacy_key=legacy_key), False
