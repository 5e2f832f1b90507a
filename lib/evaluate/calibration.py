"""Calibration and ensemble selection on validation predictions.

- Temperature scaling (Guo et al., 2017): one scalar T per member, softmax(logits / T), fitted by
  minimising the validation NLL over log T (so T stays positive) with torch's LBFGS.
- Calibration figures: NLL, Brier score, expected calibration error over 15 equal-width bins.
- Greedy forward selection with replacement (Caruana et al., 2004): start from the member with the
  lowest validation NLL (or another loss), repeatedly add the member (repeats allowed) that most lowers the NLL of
  the averaged probabilities, stop when no addition improves it; the counts are the weights.

scikit-learn has no temperature scaling (CalibratedClassifierCV wraps estimators it refits) and no
ensemble selection, so both are written here; they are a few lines over numpy and torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

logger = logging.getLogger(__name__)

ECE_BINS = 15
# Above this the fitted softmax is close to uniform: the member's logits barely beat chance.
FLAT_TEMPERATURE = 20.0
# Stop when an addition lowers the NLL by less than this: float noise must not grow the ensemble.
MIN_IMPROVEMENT = 1e-9


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on these (validation) labels."""
    logits_t = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    # A degenerate fit (e.g. every clip right with huge margins drives T to 0) must not be worse than none.
    if not np.isfinite(temperature) or nll(softmax(logits, temperature), labels) > nll(softmax(logits), labels):
        return 1.0
    return temperature


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    picked = np.asarray(probabilities)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over clips of the squared distance between the probabilities and the one-hot label (0..2)."""
    probabilities = np.asarray(probabilities)
    one_hot = np.eye(probabilities.shape[1])[labels]
    return float(((probabilities - one_hot) ** 2).sum(axis=1).mean())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence| x share of clips in the bin."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def calibration_report(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "nll": nll(probabilities, labels),
        "brier": brier(probabilities, labels),
        "ece": expected_calibration_error(probabilities, labels),
    }


def greedy_selection(
    probabilities: dict[str, np.ndarray], labels: np.ndarray, max_rounds: int = 100,
    loss: Callable[[np.ndarray, np.ndarray], float] = nll,
) -> dict[str, int]:
    """Caruana et al.'s forward selection with replacement on a validation loss of the averaged probabilities (NLL;
    a multi-label vote's: lib.evaluate.multilabel.negative_map): member name -> count (>= 1 only).

    Ties go to the name first in sorted order, so the result does not depend on dict order.
    """
    names = sorted(probabilities)
    if not names:
        raise ValueError("greedy selection needs at least one member")
    start = min(names, key=lambda name: (loss(probabilities[name], labels), name))
    counts = {start: 1}
    total = np.array(probabilities[start], dtype=np.float64)
    best = loss(total, labels)
    for size in range(2, max_rounds + 1):
        candidates = [(loss((total + probabilities[name]) / size, labels), name) for name in names]
        score, name = min(candidates)
        if score > best - MIN_IMPROVEMENT:
            break
        counts[name] = counts.get(name, 0) + 1
        total = total + probabilities[name]
        best = score
    return counts


def calibrate_member(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """One member's temperature, fitted on splits['validation'] (logits, labels) alone, and NLL, Brier
    and ECE before and after it on every split given (test figures are only reported)."""
    temperature = fit_temperature(*splits["validation"])
    warning = None
    if temperature > FLAT_TEMPERATURE:
        # Such a member's logits carry almost nothing on validation: scaled, its probabilities are
        # nearly uniform, and in a vote or a CSV its choices rest on differences too small to see.
        warning = (
            f"temperature {temperature:.3g} > {FLAT_TEMPERATURE}: this member is barely better than chance on "
            "validation, so its calibrated probabilities are nearly uniform; train it longer or leave it out"
        )
        logger.warning(warning)
    return {
        "temperature": temperature,
        "warning": warning,
        "fitted_on": "validation",
        **{
            split: {
                "before": calibration_report(softmax(logits), labels),
                "after": calibration_report(softmax(logits, temperature), labels),
            }
            for split, (logits, labels) in splits.items()
        },
    }
