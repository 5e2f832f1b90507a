"""Model cards: the README.md of a published member and of an ensemble folder, in Hugging Face's format.

YAML metadata first (library, pipeline tag, labels, and the scores as a model-index, which the Hub and its
tools read), then what a reader of the folder needs: the data, the recipe, the freezing, the calibration, the
limits and how to load it. Written from the same figures as metrics.json and calibration.json, so the two
never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lib.core.layout import CALIBRATION_FILE, METRICS_FILE

SCORES = ("accuracy", "balanced_accuracy", "f1", "precision", "recall")  # f1/precision/recall: weighted
MULTI_LABEL_SCORES = ("map", "micro_f1", "macro_f1")


def scores_of(metrics: dict) -> tuple[str, ...]:
    """The scores a card shows: a multi-label task's (its metrics have a 'map'), or SCORES."""
    return MULTI_LABEL_SCORES if "map" in metrics else SCORES


def card_text(metadata: dict, body: list[str]) -> str:
    """A model card: the metadata as YAML between --- lines, then the body's markdown lines."""
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body) + "\n"


def read_card_metadata(card: Path) -> dict:
    """The YAML metadata of a model card (what the Hub parses)."""
    _, metadata, _ = Path(card).read_text().split("---\n", 2)
    return yaml.safe_load(metadata)


def dataset_name(data: dict) -> str:
    """The dataset's name as a card gives it, from a run config's data section: a dataset layout's own name (a csv
    manifest's folder), else the folder above train/ (data/train -> data), else train_dir's own."""
    layout = data.get("layout", "folders")
    if layout == "csv":
        root = Path(data["root"])
        return (root if root.is_dir() else root.parent).name
    if layout != "folders":
        return layout
    train_dir = Path(data["train_dir"])
    return train_dir.parent.name if train_dir.name.lower() == "train" and train_dir.parent.name else train_dir.name


def data_lines(data: dict, num_clips: dict[str, int]) -> list[str]:
    """Where each split's clips came from, and how many there were."""
    if data.get("layout", "folders") == "folders":
        folders = {"train": data["train_dir"], "validation": data["validation_dir"], "test": data.get("test_dir")}
        return [f"- {split}: `{path}`, {num_clips.get(split, 0)} clips" for split, path in folders.items() if path]
    fold = f", validated on fold {data['fold']}" if data.get("fold") else ""
    return [f"- {data['layout']} dataset `{data['root']}`{fold}: "
            + ", ".join(f"{count} {split}" for split, count in num_clips.items()) + " clips"]


# The Hugging Face Hub's names of the datasets that have a layout (a model-index's dataset type).
DATASET_TYPES = {"speech_commands": "speech_commands", "esc50": "ashraq/esc50", "urbansound8k": "urbansound8k"}


def clip_text(features: dict) -> str:
    """How a clip became the model's input, as the card says it."""
    fitted = f"padded to {features['clip_seconds']:g} s"
    if features.get("long_clips") == "crop":
        return (f"{fitted}, longer ones cropped: a random window in training, the centre window in evaluation and "
                "`astft predict` (ASTFeatureExtractor alone keeps the first frames)")
    return f"cut or {fitted}"


def augmentation_text(augmentation: dict) -> str | None:
    """The training augmentations that were on, or None."""
    on = [name if isinstance(value, bool) else f"{name} {value:g}" for name, value in augmentation.items()
          if value and name not in ("mixup_alpha", "background_noise_volume")]
    if augmentation.get("background_noise_probability"):
        on.append(f"background_noise_volume {augmentation['background_noise_volume']:g}")
    return ", ".join(on) or None


def warmup_text(warmup_steps: float) -> str:
    """training.warmup_steps as it reads: under 1 it is a share of the steps (Trainer's rule), else a count."""
    return f"{warmup_steps:.0%} of the steps as warm-up" if warmup_steps < 1 else f"{warmup_steps:g} warm-up steps"


def model_index(name: str, dataset: str, scores: dict[str, dict[str, float]], kind: str = "audiofolder"
                ) -> list[dict]:
    """Hugging Face's model-index: one result per split (split -> top-level scores); kind: the dataset's type."""
    return [{
        "name": name,
        "results": [
            {
                "task": {"type": "audio-classification", "name": "Audio Classification"},
                "dataset": {"name": dataset, "type": kind, "split": split},
                "metrics": [
                    {"type": key, "value": round(float(values[key]), 4), "name": f"{split} {key}"}
                    for key in scores_of(values) if key in values
                ],
            }
            for split, values in scores.items()
        ],
    }]


def member_card(
    name: str, report_dir: Path, config: dict, member: dict, label_names: list[str], num_clips: dict[str, int],
    published: Path | None = None,
) -> str:
    """The README.md of a member: report_dir holds its metrics.json and calibration.json; config is its
    run_config.json and member the member.json it is published with; published: where it is (for the load lines)."""
    metrics = json.loads((Path(report_dir) / METRICS_FILE).read_text())
    calibration_file = Path(report_dir) / CALIBRATION_FILE
    calibration = json.loads(calibration_file.read_text()) if calibration_file.is_file() else {}
    scores = {"validation": metrics} | ({"test": metrics["test"]} if isinstance(metrics.get("test"), dict) else {})
    data, training, features = config["data"], config["training"], member["feature_params"]
    trained = member["training"]
    counts = member["parameters"]
    where = str(published) if published is not None else name
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "audio-classification",
        "tags": ["audio-classification", "audio-spectrogram-transformer", "astft"],
        "labels": list(label_names),
        "model-index": model_index(
            name, dataset_name(data), scores, DATASET_TYPES.get(data.get("layout", "folders"), "audiofolder")
        ),
    }
    shown = scores_of(metrics)
    multi_label = shown == MULTI_LABEL_SCORES
    table = ["| split | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    table += [
        f"| {split} | " + " | ".join(f"{values[key]:.4f}" for key in shown) + " |" for split, values in scores.items()
    ]
    calibration_lines = [
        f"{split.capitalize()} NLL {figures['before']['nll']:.4f} before, {figures['after']['nll']:.4f} after; "
        f"ECE {figures['before']['ece']:.4f} before, {figures['after']['ece']:.4f} after"
        + (" (worse: the temperature fitted on validation does not carry over)"
           if figures["after"]["ece"] > figures["before"]["ece"] else "") + "."
        for split, figures in calibration.items()
        if split in ("validation", "test") and isinstance(figures, dict) and "before" in figures
    ]
    body = [
        f"# {name}",
        "",
        f"An Audio Spectrogram Transformer classifier of {len(label_names)} classes ({', '.join(label_names)}), "
        f"fine-tuned with astft from the self-supervised checkpoint `{config['model']['ssl_checkpoint']}`.",
        "",
        "## Scores",
        "",
        *table,
        "",
        (f"Multi-label: mAP is the mean over the classes of each one's average precision (a ranking by chance "
         f"scores {metrics.get('chance_map', 0.0):.4f} here); micro F1 counts every clip-and-class decision, macro F1 "
         "averages the classes', both at the thresholds fitted on validation (`thresholds.json`). " if multi_label
         else "Precision, recall and F1 are weighted by class support. ")
        + "The best epoch was chosen on validation "
        f"({trained['metric']}), so the validation scores flatter it; "
        + ("the test split, never trained or tuned on, is the fair figure." if "test" in scores
           else "no test split was given: score it on held-out clips before trusting it."),
        "",
        "## Data",
        "",
        *data_lines(data, num_clips),
        f"- {len(member.get('skipped_files') or {})} files skipped as bad files (unreadable or missing)",
        f"- features: {features['num_mel_bins']} mel bins x {features['max_frames']} frames (log-mel fbank, "
        f"{features['sample_rate_hz']} Hz, clips {clip_text(features)})",
        "",
        "## Recipe",
        "",
        f"- freezing: {member['freezing']} ({counts['trainable']:,} of {counts['total']:,} parameters trained)",
        f"- {trained['epochs_run']:g} epochs run, best epoch {trained['best_epoch']} by {trained['metric']}",
        f"- AdamW, learning rate {training['learning_rate']:g}, cosine schedule with "
        f"{warmup_text(training['warmup_steps'])}, batch size {training['batch_size']} x "
        f"{training['gradient_accumulation_steps']} "
        f"accumulated, {trained['precision']} on {trained['device']}, seed {training['seed']}",
        *([f"- augmentation: {text}"] if (text := augmentation_text(training.get("augmentation", {}))) else []),
        "",
        *(["## Thresholds", "",
            f"One sigmoid per class; a class is predicted when its probability is at or above its threshold, fitted on "
            f"validation to the best F1 ({config['model'].get('thresholds', 'per_class')}, `thresholds.json`; "
            f"`astft predict` applies them). Not temperature-calibrated: {calibration.get('skipped', '')}."]
          if multi_label else
          ["## Calibration", "",
           f"Temperature {metrics.get('temperature', 1.0):.4f}, fitted on validation (`calibration.json`); divide the "
           "logits by it before the softmax for calibrated probabilities (`astft predict` does; a Hugging Face "
           "`pipeline` gives the raw softmax). " + " ".join(calibration_lines)]),
        "",
        "## Limits",
        "",
        (f"- A closed set of {len(label_names)} labels: a clip gets those at or above their thresholds, possibly none."
         if multi_label else
         f"- A closed set: every clip gets one of the {len(label_names)} labels, whatever it holds."),
        f"- Trained on {features['clip_seconds']:g} s clips at {features['sample_rate_hz']} Hz; other lengths are "
        "cut or padded, other rates resampled, which it has not been scored on.",
        "- The scores above are of these splits only; a different recording setup can score lower.",
        "",
        "## Load it",
        "",
        "```python",
        "from transformers import AutoModelForAudioClassification, ASTFeatureExtractor",
        f'model = AutoModelForAudioClassification.from_pretrained("{where}", trust_remote_code=True)',
        f'extractor = ASTFeatureExtractor.from_pretrained("{where}")',
        "```",
        "",
        f"(`{where}`: this folder), or `astft predict --model {where} --input CLIPS` for a CSV of labels and "
        + ("each class's probability. " if multi_label else "calibrated probabilities. ") +
        "Provenance (the encoder load report, speed settings, where it was trained): `member.json`.",
    ]
    return card_text(metadata, body)


def ensemble_card(name: str, leaderboard: dict, label_names: list[str], dataset: str, where: Path | None = None
                  ) -> str:
    """The README.md of an ensemble folder (best/): its members and weights, and the soft vote's scores."""
    ensemble = leaderboard["ensemble"]
    splits = [split for split in ("validation", "test") if split in ensemble]
    scores = {split: ensemble[split] for split in splits}
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "audio-classification",
        "tags": ["audio-classification", "audio-spectrogram-transformer", "astft", "ensemble"],
        "labels": list(label_names),
        "model-index": model_index(name, dataset, scores),
    }
    score = "map" if "map" in ensemble[splits[0]] else "accuracy"
    members = [
        f"| {row['name']} | {'' if row['weight'] is None else format(row['weight'], 'g')} | "
        + " | ".join(f"{row[split][score]:.4f}" for split in splits) + " |"
        for row in leaderboard["leaderboard"]
    ]
    body = [
        f"# {name}",
        "",
        ("A vote of multi-label Audio Spectrogram Transformer classifiers fine-tuned with astft: each member's "
         "sigmoid outputs are averaged with the weights below, and a class is predicted at or above the threshold "
         "fitted on validation for the vote (`ensemble.json`)." if score == "map" else
         "A calibrated soft vote of Audio Spectrogram Transformer classifiers fine-tuned with astft: each member's "
         "probabilities (temperature-scaled) are averaged with the weights below (`ensemble.json`)."),
        "",
        "| member | weight | " + " | ".join(f"{split} {score}" for split in splits) + " |",
        "|---|---|" + "---|" * len(splits),
        *members,
        "",
        ensemble.get("verdict", ""),
        "",
        "Members with no weight were not selected. Selection and weights were chosen on validation, so its scores "
        "flatter the ensemble; the test split, when there is one, is the fair figure.",
        "",
        "## Load it",
        "",
        f"`astft predict --model {where or name}/ --input CLIPS` (each member folder also loads on its own with "
        "`AutoModelForAudioClassification.from_pretrained(..., trust_remote_code=True)`).",
    ]
    return card_text(metadata, body)
