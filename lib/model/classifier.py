"""AST encoder -> final layernorm -> mean over tokens -> linear head, as a Hugging Face model (softmax over the
classes, or with config.problem_type multi_label_classification one sigmoid per class).

This module imports only torch and transformers so that ``save_pretrained`` can copy it next to a
published member: the member then loads in one line anywhere, with or without this project:

    AutoModelForAudioClassification.from_pretrained(member_dir, trust_remote_code=True)
    # or, with this project installed:
    ASTMeanPoolClassifier.from_pretrained(member_dir)
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import ASTConfig, ASTModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    ASTPreTrainedModel,
)

POOLINGS = ("mean", "mean_patches")
# transformers' config.problem_type of a multi-label head (model.task multi_label); single-label heads leave it unset
MULTI_LABEL = "multi_label_classification"
SPECIAL_TOKENS = 2  # AST prepends a cls and a distillation token


@strict
class ASTMeanPoolConfig(ASTConfig):
    """ASTConfig plus the head: the label maps (id2label/label2id), pooling and dropout."""

    model_type = "ast-mean-pool-classifier"

    pooling: str = "mean"
    classifier_dropout: float = 0.0

    def validate_architecture(self):
        super().validate_architecture()
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


class ASTMeanPoolClassifier(ASTPreTrainedModel):
    """The notebook's AST_Classifier as a PreTrainedModel, so it saves and loads the ordinary way."""

    config_class = ASTMeanPoolConfig
    # why: docs/decisions.md, "The classifier does not accept loss kwargs"
    accepts_loss_kwargs = False

    def __init__(self, config: ASTMeanPoolConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.audio_spectrogram_transformer = ASTModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def save_pretrained(self, *args, save_original_format: bool = False, **kwargs):
        # why: docs/decisions.md, "Members are saved under transformers 5 weight names"
        return super().save_pretrained(*args, save_original_format=save_original_format, **kwargs)

    @property
    def encoder(self) -> ASTModel:
        return self.audio_spectrogram_transformer

    def pool(self, input_values: torch.Tensor) -> torch.Tensor:
        # ASTModel already applies its final layernorm to last_hidden_state. The notebook applied
        # that layernorm a second time; once is what the pretrained weights were trained with.
        return self.pool_tokens(self.audio_spectrogram_transformer(input_values).last_hidden_state)

    def pool_tokens(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """Mean over the (layer-normed) token states, per config.pooling."""
        if self.config.pooling == "mean_patches":
            sequence_output = sequence_output[:, SPECIAL_TOKENS:]
        return sequence_output.mean(dim=1)

    def forward(
        self,
        input_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        return self.classify(self.audio_spectrogram_transformer(input_values).last_hidden_state, labels)

    def classify(self, sequence_output: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """Pooling, dropout, head and loss on the encoder's output; lib.model.trunk's tail ends with this too."""
        logits = self.classifier(self.dropout(self.pool_tokens(sequence_output)))
        loss = None
        if labels is not None and self.config.problem_type == MULTI_LABEL:
            # a clip's classes as a multi-hot row: one sigmoid per class
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_classifier(
    encoder: ASTModel,
    label_names: list[str],
    pooling: str = "mean",
    classifier_dropout: float = 0.0,
    attention: str = "sdpa",
    multi_label: bool = False,
) -> ASTMeanPoolClassifier:
    """Wrap a loaded encoder with a freshly initialised head; the label order is the given one.

    attention is the kernel every encoder layer calls (transformers' attn_implementation: 'sdpa' or
    'eager'); it is not saved in config.json, so a published member loads with the loader's default.
    multi_label: sigmoid outputs and binary cross-entropy (config.problem_type, saved with the member).
    """
    config = ASTMeanPoolConfig(
        **{key: value for key, value in encoder.config.to_dict().items() if key in ASTConfig.__annotations__},
        pooling=pooling,
        classifier_dropout=classifier_dropout,
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
        attn_implementation=attention,
        **({"problem_type": MULTI_LABEL} if multi_label else {}),
    )
    model = ASTMeanPoolClassifier(config)
    model.audio_spectrogram_transformer.load_state_dict(encoder.state_dict(), strict=True)
    return model


def apply_freezing(model: ASTMeanPoolClassifier, head_only: bool = False, train_last_n_layers: int = 0) -> dict:
    """Set requires_grad per variant; the head and the final layernorm always train.

    (The notebook's last-N mode froze everything and re-enabled only the N layers, which left its
    own head frozen: that bug is why the head is re-enabled unconditionally here.)
    Returns trainable/total parameter counts.
    """
    layers = model.audio_spectrogram_transformer.layers
    if head_only and train_last_n_layers:
        raise ValueError("head_only and train_last_n_layers are exclusive")
    if not 0 <= train_last_n_layers <= len(layers):
        raise ValueError(
            f"train_last_n_layers={train_last_n_layers} but the encoder has {len(layers)} layers; "
            f"use 0 (full) to {len(layers)}"
        )
    full = not head_only and train_last_n_layers == 0
    for parameter in model.parameters():
        parameter.requires_grad = full
    if not full:
        trainable = [model.classifier, model.audio_spectrogram_transformer.layernorm]
        if train_last_n_layers:
            trainable += list(layers[-train_last_n_layers:])
        for module in trainable:
            for parameter in module.parameters():
                parameter.requires_grad = True
    total = sum(p.numel() for p in model.parameters())
    trainable_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable_count, "total": total, "frozen": total - trainable_count}


ASTMeanPoolConfig.register_for_auto_class()
ASTMeanPoolClassifier.register_for_auto_class("AutoModelForAudioClassification")
