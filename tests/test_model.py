import pytest
import torch
from transformers import ASTModel, AutoModelForAudioClassification

from lib.model import ASTMeanPoolClassifier, apply_freezing, build_classifier
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
