import json

import pytest
import torch
from safetensors.torch import save_file

from lib.checkpoint import (
    CheckpointError,
    export_encoder,
    load_encoder,
    read_ast_config,
    resolve_encoder_config,
    BUNDLED_CONFIG,
)
from lib.example import make_ssl_checkpoint
from tests.conftest import small_config


def assert_same_weights(loaded, reference):
    reference_state = reference.state_dict()
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == reference_state.keys()
    for key, tensor in reference_state.items():
        assert torch.equal(loaded_state[key], tensor), key


@pytest.mark.parametrize("layout", ["4.x", "5.x"])
def test_both_transformers_layouts_load_the_exact_encoder_weights(tmp_path, layout):
    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=5, layout=layout)
    encoder, report = load_encoder(folder)
    assert_same_weights(encoder, reference)
    assert report.prefix == "encoder."
    assert report.dropped == {"projector": 4, "decoder": 2}
    assert report.unexpected == []
    assert report.config_source.endswith("config.json")


def test_bare_and_hf_classifier_prefixes_load_too(tmp_path):
    _, reference = make_ssl_checkpoint(tmp_path / "ref", small_config(), seed=2, layout="5.x")
    state = reference.state_dict()
    for prefix in ("", "audio_spectrogram_transformer."):
        folder = tmp_path / f"p{len(prefix)}"
        folder.mkdir()
        tensors = {f"{prefix}{k}": v.contiguous() for k, v in state.items()}
        tensors["classifier.dense.weight"] = torch.zeros(5, 32)
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
        encoder, report = load_encoder(folder)
        assert_same_weights(encoder, reference)
        assert report.prefix == prefix


def test_config_comes_from_base_config_when_the_checkpoint_has_none(tmp_path):
    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), write_config=False)
    base = tmp_path / "base.json"
    base.write_text(json.dumps(reference.config.to_dict()))
    encoder, report = load_encoder(folder, base)
    assert report.config_source == str(base)
    assert_same_weights(encoder, reference)
    # without --base-config the bundled AST-base config is used, and the mismatch is named
    with pytest.raises(CheckpointError, match="2 encoder layers but the config .* num_hidden_layers=12"):
        load_encoder(folder)


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    folder, _ = make_ssl_checkpoint(tmp_path / "ckpt", small_config())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_length": 128}))
    with pytest.raises(CheckpointError) as error:
        load_encoder(folder)
    message = str(error.value)
    assert "embeddings.position_embeddings: checkpoint (1, 27, 32) vs model (1, 62, 32)" in message
    assert "--base-config" in message


def test_missing_weights_and_non_safetensors_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no model.safetensors .*pytorch_model.bin"):
        load_encoder(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_text("not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder(broken)


def test_bundled_default_is_the_audioset_ast_base_architecture(tmp_path):
    config = read_ast_config(BUNDLED_CONFIG)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert (config.max_length, config.num_mel_bins, config.frequency_stride, config.time_stride) == (1024, 128, 10, 10)
    assert resolve_encoder_config(tmp_path)[1].startswith("bundled MIT/ast-finetuned-audioset-10-10-0.4593")


def test_export_encoder_strips_once_and_reuses(tmp_path):
    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=9)
    first, hit = export_encoder(folder, None, tmp_path / "cache")
    assert not hit
    second, hit = export_encoder(folder, None, tmp_path / "cache")
    assert hit and second.path == first.path
    from transformers import ASTModel

    assert_same_weights(ASTModel.from_pretrained(first.path), reference)
