"""Test factories: SSL-style checkpoints (encoder + projector + decoder) written with safetensors, in either
transformers' 4.x or 5.x key names, as the SSL runs users bring would hold them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import ASTConfig, ASTModel

from lib.example import tiny_ast_config
from lib.model.checkpoint import architecture_dict

# transformers 5 name -> transformers 4.x name, for writing checkpoints the way real SSL runs saved them.
_V4_RENAMES = (
    ("layers.", "encoder.layer."),
    ("attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.attention.value"),
    ("attention.o_proj", "attention.output.dense"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
)


def to_transformers4_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in state_dict.items():
        for new, old in _V4_RENAMES:
            key = key.replace(new, old)
        renamed[key] = tensor
    return renamed


def make_ssl_checkpoint(
    folder: Path,
    config: ASTConfig | None = None,
    seed: int = 0,
    layout: str = "4.x",
    write_config: bool = True,
) -> tuple[Path, ASTModel]:
    """Write an SSL wrapper checkpoint (encoder.* + projector.* + decoder.*) as model.safetensors.

    The encoder is randomly initialised: the example shows the mechanics of the pipeline, not the
    benefit of SSL pretraining. Returns the folder and the encoder it holds.
    """
    config = config or tiny_ast_config()
    torch.manual_seed(seed)
    encoder = ASTModel(config)
    # ASTModel zero-initialises the position embeddings; give them values so that a test can tell
    # loaded weights from fresh ones.
    with torch.no_grad():
        encoder.embeddings.position_embeddings.normal_(std=0.02)
    encoder_state = encoder.state_dict()
    if layout == "4.x":
        encoder_state = to_transformers4_names(encoder_state)
    elif layout != "5.x":
        raise ValueError(f"layout must be '4.x' or '5.x', got {layout!r}")
    hidden = config.hidden_size
    # The SSL heads' shapes mimic the original wrapper (output_dim=[1024, 128]); their exact
    # architecture does not matter, since loading drops everything outside encoder.*.
    heads = {
        "projector.0.weight": torch.randn(hidden * 2, hidden) * 0.02,
        "projector.0.bias": torch.zeros(hidden * 2),
        "projector.2.weight": torch.randn(128, hidden * 2) * 0.02,
        "projector.2.bias": torch.zeros(128),
        "decoder.weight": torch.randn(config.patch_size**2, hidden) * 0.02,
        "decoder.bias": torch.zeros(config.patch_size**2),
    }
    state = {f"encoder.{key}": tensor.contiguous() for key, tensor in encoder_state.items()} | heads
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if write_config:
        (folder / "config.json").write_text(
            json.dumps({"model_type": "audio-spectrogram-transformer", **architecture_dict(config)}, indent=2)
        )
    return folder, encoder


def make_member(
    root: Path, name: str, label_names: list[str], validation_dir: Path, seed: int = 0, temperature: float = 1.0,
    feature_params: dict | None = None,
) -> Path:
    """A published member as predict and export read it: a random tiny classifier (64 mel bins x 64 frames), its
    member.json, calibration.json and the run_config.json that names its validation folder."""
    from lib.data.features import FeatureParams
    from lib.model.classifier import build_classifier
    from tests.helpers import small_config

    torch.manual_seed(seed)
    folder = Path(root) / name
    build_classifier(ASTModel(small_config()), list(label_names)).save_pretrained(str(folder))
    params = FeatureParams(**{"num_mel_bins": 64, "max_frames": 64, "clip_seconds": 0.6, **(feature_params or {})})
    (folder / "member.json").write_text(json.dumps({"name": name, "freezing": "full",
                                                    "feature_params": params.model_dump()}))
    (folder / "calibration.json").write_text(json.dumps({"temperature": temperature}))
    (folder / "run_config.json").write_text(json.dumps({"data": {"validation_dir": str(validation_dir)}}))
    return folder
