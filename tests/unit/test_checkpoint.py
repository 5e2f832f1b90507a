import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ASTModel
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    ASTPatchEmbeddings,
)

from lib.core.errors import CheckpointError
from lib.model.checkpoint import (
    BUNDLED_CONFIG,
    export_encoder,
    load_encoder,
    patch_grid,
    read_ast_config,
    resolve_encoder_config,
)
from tests.factories import make_ssl_checkpoint
from tests.helpers import small_config


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
    # 64 mel bins -> 5 frequency patches; 64 frames -> 5 time patches, 128 frames -> 12
    assert "embeddings.position_embeddings: checkpoint (1, 27, 32) has 27 tokens" in message
    assert "2 + 5 x 12 = 62" in message and "looks like 5 x 5 patches" in message
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
    assert_same_weights(ASTModel.from_pretrained(first.path), reference)


def test_the_same_checkpoint_moved_or_published_again_keeps_its_encoder_key(tmp_path):
    import os
    import shutil

    folder, _ = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=9)
    first, _ = export_encoder(folder, None, tmp_path / "cache")
    again = shutil.copytree(folder, tmp_path / ".enc.v-2")  # a new version folder behind a re-published link
    os.utime(again / "model.safetensors", (1, 1))
    (tmp_path / "ssl").mkdir()
    (tmp_path / "ssl" / "enc").symlink_to(again)
    second, hit = export_encoder(tmp_path / "ssl" / "enc", None, tmp_path / "cache")
    assert hit and second.path == first.path
    assert second.legacy_key != first.legacy_key  # what 0.1.0 keyed by path and mtime


def test_other_weights_get_another_encoder_key(tmp_path):
    folder, _ = make_ssl_checkpoint(tmp_path / "a", small_config(), seed=9)
    other, _ = make_ssl_checkpoint(tmp_path / "b", small_config(), seed=10)
    first, _ = export_encoder(folder, None, tmp_path / "cache")
    second, _ = export_encoder(other, None, tmp_path / "cache")
    assert first.path != second.path


def position_embeddings(model) -> torch.Tensor:
    return model.state_dict()["embeddings.position_embeddings"]


def assert_same_weights_except_positions(loaded, reference):
    loaded_state, reference_state = loaded.state_dict(), reference.state_dict()
    assert loaded_state.keys() == reference_state.keys()
    for key, tensor in reference_state.items():
        if key != "embeddings.position_embeddings":
            assert torch.equal(loaded_state[key], tensor), key


def test_patch_tokens_are_frequency_major_in_transformers_ast():
    # The crop relies on this layout: token n is patch (n // time_patches, n % time_patches).
    config = small_config(hidden_size=2, num_attention_heads=1)
    frequency_patches, time_patches = patch_grid(config)
    embed = ASTPatchEmbeddings(config)
    with torch.no_grad():
        embed.projection.weight.zero_()
        embed.projection.bias.zero_()
        embed.projection.weight[0, 0, 0, 0] = 1.0  # channel 0 = the patch's first (frequency, time) cell
    frames, bins = torch.meshgrid(torch.arange(config.max_length), torch.arange(config.num_mel_bins), indexing="ij")
    values = (1000.0 * frames + bins).unsqueeze(0)  # input (batch, time, frequency)
    tokens = embed(values)[0, :, 0]
    assert tokens.shape[0] == frequency_patches * time_patches
    for index, value in enumerate(tokens.tolist()):
        f, t = divmod(index, time_patches)
        assert value == 1000.0 * t * config.time_stride + f * config.frequency_stride


def test_shorter_max_frames_keeps_the_centred_time_columns(tmp_path):
    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(max_length=128), seed=4)
    encoder, report = load_encoder(folder, max_frames=64)

    assert encoder.config.max_length == 64
    assert report.position_grid.checkpoint == (5, 12) and report.position_grid.encoder == (5, 5)
    assert report.position_grid.adaptation == "centre_cut"
    before, after = position_embeddings(reference), position_embeddings(encoder)
    assert after.shape == (1, 2 + 5 * 5, 32)
    assert torch.equal(after[:, :2], before[:, :2])  # cls and distillation tokens
    start = 12 // 2 - 5 // 2  # AST/SSAST: int(T/2) - int(t/2)
    for f in range(5):
        for t in range(5):
            assert torch.equal(after[0, 2 + f * 5 + t], before[0, 2 + f * 12 + start + t]), (f, t)
    assert_same_weights_except_positions(encoder, reference)
    assert encoder(torch.randn(1, 64, 64)).last_hidden_state.shape == (1, 27, 32)


def test_longer_max_frames_interpolates_along_time_only(tmp_path):
    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=4)  # 5 x 5 patches
    # Every frequency row gets its own constant: interpolating along time alone must keep it.
    before = position_embeddings(reference).clone()
    before[0, 2:] = torch.arange(5.0).repeat_interleave(5)[:, None]
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.embeddings.position_embeddings"] = before.contiguous()
    save_file(state, str(folder / "model.safetensors"))

    encoder, report = load_encoder(folder, max_frames=128)
    assert encoder.config.max_length == 128
    assert report.position_grid.encoder == (5, 12) and report.position_grid.adaptation == "bilinear"
    after = position_embeddings(encoder)
    assert after.shape == (1, 2 + 5 * 12, 32)
    assert torch.equal(after[:, :2], before[:, :2])  # cls and distillation tokens
    torch.testing.assert_close(after[0, 2:], torch.arange(5.0).repeat_interleave(12)[:, None].expand(-1, 32))
    assert_same_weights_except_positions(encoder, reference)
    assert encoder(torch.randn(1, 128, 64)).last_hidden_state.shape == (1, 62, 32)


@pytest.mark.parametrize("max_frames", [64, 65])  # 65 frames still make 5 time patches
def test_max_frames_on_the_checkpoints_grid_keeps_identical_weights(tmp_path, max_frames):
    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=6)
    encoder, report = load_encoder(folder, max_frames=max_frames)
    assert_same_weights(encoder, reference)
    assert encoder.config.max_length == max_frames
    assert report.position_grid.adaptation == "none"


def test_max_frames_shorter_than_a_patch_is_a_clear_error(tmp_path):
    folder, _ = make_ssl_checkpoint(tmp_path / "ckpt", small_config())
    with pytest.raises(CheckpointError, match="features.max_frames is 8, shorter than one 16-frame patch"):
        load_encoder(folder, max_frames=8)


def test_encoder_cache_is_keyed_by_max_frames(tmp_path):
    folder, _ = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=9)
    native, _ = export_encoder(folder, None, tmp_path / "cache")
    longer, hit = export_encoder(folder, None, tmp_path / "cache", max_frames=128)
    assert not hit and longer.path != native.path
    reloaded = ASTModel.from_pretrained(longer.path)
    assert reloaded.config.max_length == 128
    assert position_embeddings(reloaded).shape == (1, 62, 32)
    assert longer.report.position_grid.adaptation == "bilinear"


def test_a_truncated_cached_encoder_is_rebuilt_not_reused(tmp_path):
    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=9)
    first, _ = export_encoder(folder, None, tmp_path / "cache")
    weights = tmp_path / "cache" / "encoders" / first.path.split("/")[-1] / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:  # a copy or disk that lost the file's tail
        handle.truncate(size // 2)
    again, hit = export_encoder(folder, None, tmp_path / "cache")
    assert not hit and again.path == first.path
    assert weights.stat().st_size == size
    assert_same_weights(ASTModel.from_pretrained(again.path), reference)
    assert export_encoder(folder, None, tmp_path / "cache")[1]  # and the rebuilt one is a hit again


def test_an_encoder_cache_without_its_size_manifest_is_rebuilt(tmp_path):
    # e.g. written by an older astft, or by a run killed before it finished: nothing proves it whole
    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=9)
    first, _ = export_encoder(folder, None, tmp_path / "cache")
    (tmp_path / "cache" / "encoders" / first.path.split("/")[-1] / "meta.json").unlink()
    again, hit = export_encoder(folder, None, tmp_path / "cache")
    assert not hit
    assert_same_weights(ASTModel.from_pretrained(again.path), reference)


def test_export_encoder_removes_staging_left_by_a_killed_run(tmp_path):
    import subprocess
    import sys

    from lib.core.staging import owner_tag

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = owner_tag(child.pid)
    child.kill()
    child.wait()
    folder, _ = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=9)
    root = tmp_path / "cache" / "encoders"
    leftover, live = root / f".abc.tmp-{dead}-0123abcd", root / f".abc.tmp-{owner_tag()}-0123abcd"
    for staging in (leftover, live):
        staging.mkdir(parents=True)
        (staging / "model.safetensors").write_bytes(b"half")
    ref, _ = export_encoder(folder, None, tmp_path / "cache")
    assert not leftover.exists() and live.is_dir()
    assert sorted(p.name for p in root.iterdir()) == sorted([live.name, ref.path.split("/")[-1]])
