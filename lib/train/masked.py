"""The Trainer of SSAST's masked patch objective: training figures logged with the loss, validation metrics."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import EvalPrediction, Trainer

from lib.model.masked_patches import STATS, summarise


class MaskedPatchTrainer(Trainer):
    """HF Trainer that also logs the training InfoNCE, MSE, total and masked-patch accuracy with its loss.

    Trainer logs only the loss; these figures are pooled over every masked patch since the last log
    (an epoch here) from the per-clip sums the model returns. Evaluation restarts the evaluation
    masks first, so every epoch scores the same masked patches.
    """

    def __init__(self, *args, generative_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.generative_weight = generative_weight
        self.train_stats: torch.Tensor | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            stats = outputs.clip_stats.sum(dim=0)
            self.train_stats = stats if self.train_stats is None else self.train_stats + stats
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.train_stats is not None:  # a training log (evaluation logs eval_loss)
            logs = {**logs, **summarise(self.train_stats, self.generative_weight)}
            self.train_stats = None
        super().log(logs, start_time)

    def evaluate(self, *args, **kwargs):
        self.accelerator.unwrap_model(self.model).reset_eval_masks()
        return super().evaluate(*args, **kwargs)


def masked_patch_metrics(generative_weight: float) -> Callable[[EvalPrediction], dict[str, float | None]]:
    """compute_metrics: the clips' stats (lib.model.masked_patches.STATS columns) pooled into nce, mse, total, accuracy
    (None: not measured, see summarise) and the count of masked patches scored."""

    def compute(prediction: EvalPrediction) -> dict[str, float | None]:
        stats = torch.as_tensor(prediction.predictions).reshape(-1, len(STATS)).sum(dim=0)
        return summarise(stats, generative_weight) | {"masked_patches": float(stats[STATS.index("nce_patches")])}

    return compute
