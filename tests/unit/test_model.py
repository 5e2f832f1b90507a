import pytest
import torch
from transformers import ASTModel, AutoModelForAudioClassification

from lib.model.classifier import ASTMeanPoolClassifier, apply_freezing, build_classifier
from tests.helpers import small_config

LABELS = ["cat", "dog", "eel"]
HEAD = {"classifier.weight", "classifier.bias",
        "audio_spectrogram_transformer.layernorm.weight", "audio_spectrogram_transformer.layernorm.bias"}


def fresh_model(pooling="mean"):
    torch.manual_seed(0)
    return build_classifier(ASTModel(small_config()), LABELS, pooling=pooling)


def trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_head_only_trains_exactly_the_head_and_final_layernorm():
    model = fresh_model()
    counts = apply_freezing(model, head_only=True)
    assert trainable(model) == HEAD
    assert counts["trainable"] == 32 * 3 + 3 + 32 + 32
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_last_n_layers_also_trains_the_head():
    model = fresh_model()
    apply_freezing(model, train_last_n_layers=1)
    layer1 = {n for n, _ in model.named_parameters() if n.startswith("audio_spectrogram_transformer.layers.1.")}
    assert len(layer1) == 16
    assert trainable(model) == HEAD | layer1  # the notebook froze its own head here


def test_full_trains_everything_and_bad_n_is_rejected():
    model = fresh_model()
    apply_freezing(model, train_last_n_layers=1)
    apply_freezing(model)
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="train_last_n_layers=3 but the encoder has 2 layers"):
        apply_freezing(model, train_last_n_layers=3)


def test_encoder_weights_are_the_given_encoder_and_labels_are_in_config():
    torch.manual_seed(1)
    encoder = ASTModel(small_config())
    model = build_classifier(encoder, LABELS)
    for key, tensor in encoder.state_dict().items():
        assert torch.equal(model.audio_spectrogram_transformer.state_dict()[key], tensor)
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    assert model.config.label2id == {"cat": 0, "dog": 1, "eel": 2}


@pytest.mark.parametrize("pooling", ["mean", "mean_patches"])
def test_pooling_is_layernormed_token_mean(pooling):
    model = fresh_model(pooling).eval()
    x = torch.randn(2, 64, 64)
    with torch.no_grad():
        hidden = model.audio_spectrogram_transformer(x).last_hidden_state
        expected = model.classifier(hidden[:, 2:].mean(1) if pooling == "mean_patches" else hidden.mean(1))
        assert torch.allclose(model(x).logits, expected, atol=1e-6)
        out = model(x, labels=torch.tensor([0, 2]))
    assert torch.isclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])))


def test_saved_member_reloads_in_one_line_with_identical_logits(tmp_path):
    model = fresh_model().eval()
    x = torch.randn(3, 64, 64)
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path)
    for loaded in (
        ASTMeanPoolClassifier.from_pretrained(tmp_path),
        AutoModelForAudioClassification.from_pretrained(tmp_path, trust_remote_code=True),
    ):
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x).logits, expected)
        assert loaded.config.id2label[2] == "eel"


def test_sdpa_and_eager_attention_are_what_the_layers_call_and_compute_the_same_logits(monkeypatch):
    from transformers.models.audio_spectrogram_transformer import (
        modeling_audio_spectrogram_transformer as ast,
    )

    calls = {"sdpa": 0, "eager": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setitem(ast.ALL_ATTENTION_FUNCTIONS, "sdpa", counting("sdpa", ast.ALL_ATTENTION_FUNCTIONS["sdpa"]))
    monkeypatch.setattr(ast, "eager_attention_forward", counting("eager", ast.eager_attention_forward))
    torch.manual_seed(0)
    encoder = ASTModel(small_config())
    features = torch.randn(4, 64, 64)
    logits = {}
    for attention in ("sdpa", "eager"):
        torch.manual_seed(1)  # the same head
        model = build_classifier(encoder, LABELS, attention=attention).eval()
        assert model.config._attn_implementation == attention
        assert {layer.attention.config._attn_implementation for layer in model.encoder.layers} == {attention}
        with torch.no_grad():
            logits[attention] = model(input_values=features).logits
        assert calls[attention] == len(model.encoder.layers)  # one call per layer, of this kernel
    assert calls == {"sdpa": 2, "eager": 2}
    torch.testing.assert_close(logits["sdpa"], logits["eager"], rtol=1e-5, atol=1e-5)
