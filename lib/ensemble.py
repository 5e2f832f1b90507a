"""Ensembles of published members: compatibility checks, soft vote, leaderboard, prediction."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError
from safetensors import SafetensorError, safe_open

from lib.audio import AudioError, load_clip
from lib.checkpoint import WEIGHTS_FILE
from lib.config import SUMMARY_METRICS
from lib.evaluation import METRICS_FILE, PREDICTIONS_FILE
from lib.features import FeatureParams, make_feature_extractor
from lib.metrics import detailed_report, softmax, summary_metrics
from lib.scan import AUDIO_SUFFIXES
from lib.training import Runtime

logger = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
MEMBER_FILE = "member.json"
REPUBLISH = "re-publish the member (re-run astft finetune, or astft ensemble, for it)"


class EnsembleError(ValueError):
    """Members that cannot be combined, or an ensemble folder that cannot be read."""


class MemberInfo(BaseModel):
    name: str
    path: str
    label_names: list[str]
    feature_params: FeatureParams
    feature_cache_key: str | None = None
    freezing: str | None = None
    weight: float = Field(1.0, gt=0)


def read_member(path: Path, weight: float = 1.0) -> MemberInfo:
    path = Path(path)
    config_file, member_file = path / "config.json", path / MEMBER_FILE
    if not config_file.is_file() or not member_file.is_file():
        raise EnsembleError(
            f"{path} is not a published member (needs config.json and {MEMBER_FILE}); pass a folder that "
            "astft finetune/ensemble published under <output_dir>/best/"
        )
    config, member = _read_member_files(config_file, member_file)
    id2label = config["id2label"]
    return MemberInfo(
        name=member.get("name", path.name),
        path=str(path),
        label_names=[id2label[str(i)] for i in range(len(id2label))],
        feature_params=FeatureParams.model_validate(member["feature_params"]),
        feature_cache_key=member.get("feature_cache_key"),
        freezing=member.get("freezing"),
        weight=weight,
    )


def check_compatible(members: list[MemberInfo], same_validation_set: bool = False) -> None:
    """Every member must share the label order (and, to vote on stored logits, the validation features)."""
    if not members:
        raise EnsembleError("an ensemble needs at least one member")
    reference = members[0]
    for member in members[1:]:
        if member.label_names != reference.label_names:
            raise EnsembleError(
                f"member {member.name} has labels {member.label_names} but {reference.name} has "
                f"{reference.label_names}; members must be trained on the same class folders"
            )
        if same_validation_set and member.feature_cache_key != reference.feature_cache_key:
            raise EnsembleError(
                f"members {reference.name} and {member.name} were validated on different feature caches "
                f"({reference.feature_cache_key} vs {member.feature_cache_key}): same folders, clip length and "
                "frames are needed to vote on their stored validation logits"
            )


def soft_vote(probabilities: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Weighted mean of per-member class probabilities (clips x classes)."""
    weights = np.ones(len(probabilities)) if weights is None else np.asarray(weights, dtype=np.float64)
    stacked = np.stack(probabilities).astype(np.float64)
    return np.tensordot(weights / weights.sum(), stacked, axes=1)


def evaluate_ensemble(members: list[MemberInfo], output_file: Path, failed: dict[str, str] | None = None) -> dict:
    """Soft-vote the members' stored validation logits; write the leaderboard as JSON and return it."""
    check_compatible(members, same_validation_set=True)
    probabilities, labels = [], None
    rows = []
    for member in members:
        stored = np.load(Path(member.path) / PREDICTIONS_FILE)
        if labels is None:
            labels = stored["labels"]
        elif not np.array_equal(labels, stored["labels"]):
            raise EnsembleError(
                f"member {member.name} was validated on clips in another order than {members[0].name}; "
                "re-run the ensemble so every member is evaluated on the same feature cache"
            )
        probabilities.append(softmax(stored["logits"]))
        metrics = json.loads((Path(member.path) / METRICS_FILE).read_text())
        rows.append({"name": member.name, "freezing": member.freezing, "weight": member.weight,
                     **{key: metrics[key] for key in SUMMARY_METRICS}})
    voted = soft_vote(probabilities, [member.weight for member in members])
    predictions = voted.argmax(axis=-1)
    ensemble_metrics = summary_metrics(labels, predictions)
    report = detailed_report(labels, predictions, members[0].label_names)
    leaderboard = {
        "label_names": members[0].label_names,
        "members": [member.model_dump(include={"name", "path", "weight", "freezing"}) for member in members],
        "leaderboard": sorted(rows, key=lambda row: -row["accuracy"])
        + [{"name": "ensemble (soft vote)", "freezing": None, "weight": None, **ensemble_metrics}],
        "ensemble": {**ensemble_metrics, "num_samples": int(len(labels)), **report},
        "failed": failed or {},
    }
    Path(output_file).write_text(json.dumps(leaderboard, indent=2))
    return leaderboard


# --- prediction ---------------------------------------------------------------------------------


def resolve_members(model_path: Path) -> list[MemberInfo]:
    """A member folder, or an ensemble folder (<output>/best/) of members with an optional ensemble.json."""
    model_path = Path(model_path)
    if (model_path / "config.json").is_file():
        return [read_member(model_path)]
    ensemble_file = model_path / ENSEMBLE_FILE
    if ensemble_file.is_file():
        listed = _read_ensemble_listing(ensemble_file)
        return [read_member(model_path / Path(item["path"]).name, item.get("weight", 1.0)) for item in listed]
    # Hidden entries are publish backups and staging folders, never members.
    members = [
        read_member(p) for p in sorted(model_path.iterdir())
        if not p.name.startswith(".") and (p / MEMBER_FILE).is_file()
    ]
    if not members:
        raise EnsembleError(
            f"--model (model_path) {model_path}: neither a member folder nor a folder of members; pass "
            "<output_dir>/best/ for the ensemble or <output_dir>/best/<name>/ for one member"
        )
    return members


def list_inputs(input_path: Path) -> list[Path]:
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise EnsembleError(f"--input (input_path) {input_path}: no such file or folder")
    files = sorted(
        p for p in input_path.rglob("*")
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(input_path).parts)
    )
    if not files:
        raise EnsembleError(f"--input (input_path) {input_path}: no .wav files found")
    return files


def predict_files(
    model_path: Path,
    input_path: Path,
    output_csv: Path,
    runtime: Runtime,
    batch_size: int = 32,
    skip_bad_files: bool = False,
) -> dict:
    """Write file, predicted label and per-class probabilities for every clip; return a summary."""
    # inputs and output first: a bad path must not cost a model load and a whole inference pass
    _check_model_path(model_path)
    members = resolve_members(model_path)
    check_compatible(members)
    _check_member_weights(members)
    label_names = members[0].label_names
    files = list_inputs(input_path)
    _check_output_csv(Path(output_csv))
    bad: dict[str, str] = {}
    models = [_load_member_model(member).to(runtime.device).eval() for member in members]
    extractors = [make_feature_extractor(member.feature_params) for member in members]
    member_probabilities = [np.zeros((len(files), len(label_names))) for _ in members]
    for start in range(0, len(files), batch_size):
        batch_files = files[start : start + batch_size]
        # Decode each clip once per distinct (rate, length) and featurise once per distinct
        # feature parameters, however many members share them.
        waveforms: dict[tuple, tuple[list[np.ndarray], list[int]]] = {}
        features: dict[str, torch.Tensor] = {}
        for index, (member, model) in enumerate(zip(members, models)):
            params = member.feature_params
            audio_key = (params.sample_rate_hz, params.clip_seconds)
            if audio_key not in waveforms:
                decoded, rows = [], []
                for offset, path in enumerate(batch_files):
                    try:
                        decoded.append(load_clip(path, *audio_key))
                        rows.append(start + offset)
                    except AudioError as error:
                        bad[str(path)] = error.reason
                waveforms[audio_key] = (decoded, rows)
            decoded, rows = waveforms[audio_key]
            if not decoded:
                continue
            feature_key = params.model_dump_json()
            if feature_key not in features:
                features[feature_key] = extractors[index](
                    decoded, sampling_rate=params.sample_rate_hz, return_tensors="pt"
                )["input_values"]
            with torch.inference_mode():
                logits = model(input_values=features[feature_key].to(runtime.device)).logits
            member_probabilities[index][rows] = softmax(logits.float().cpu().numpy())
    if bad and not skip_bad_files:
        listing = "\n".join(f"  - {path}: {reason}" for path, reason in sorted(bad.items()))
        raise EnsembleError(f"{len(bad)} input file(s) could not be read:\n{listing}\npass --skip-bad-files to skip them")
    voted = soft_vote(member_probabilities, [member.weight for member in members])
    output_csv = Path(output_csv)
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with output_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "predicted_label", *[f"prob_{name}" for name in label_names]])
        for path, row in zip(files, voted):
            if str(path) in bad:
                continue
            writer.writerow([str(path), label_names[int(row.argmax())], *[f"{p:.6f}" for p in row]])
            written += 1
    for path, reason in bad.items():
        logger.warning("skipped %s: %s", path, reason)
    return {"csv": str(output_csv), "predicted": written, "skipped": len(bad), "members": [m.name for m in members]}


# --- prediction: checks run before any model is loaded ------------------------------------------


def _read_json_object(path: Path, fix: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except OSError as error:
        raise EnsembleError(f"cannot read {path}: {error}; check that it is a file you can read") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnsembleError(f"{path} is not valid JSON ({error}); {fix}") from error
    if not isinstance(value, dict):
        raise EnsembleError(f"{path}: expected a JSON object, found {type(value).__name__}; {fix}")
    return value


def _read_member_files(config_file: Path, member_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A member's config.json and member.json, with everything read_member takes from them checked."""
    config, member = _read_json_object(config_file, REPUBLISH), _read_json_object(member_file, REPUBLISH)
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise EnsembleError(f"{config_file}: no 'id2label' label map; {REPUBLISH}")
    missing = [i for i in range(len(id2label)) if str(i) not in id2label]
    if missing:
        raise EnsembleError(f"{config_file}: no 'id2label' entry for class {missing[0]}; {REPUBLISH}")
    if "feature_params" not in member:
        raise EnsembleError(f"{member_file}: no 'feature_params'; {REPUBLISH}")
    try:
        FeatureParams.model_validate(member["feature_params"])
    except ValidationError as error:
        raise EnsembleError(f"{member_file}: invalid 'feature_params' ({error}); {REPUBLISH}") from error
    return config, member


def _read_ensemble_listing(ensemble_file: Path) -> list[dict[str, Any]]:
    """ensemble.json's members: each with a 'path' and, if given, a positive finite 'weight'."""
    fix = (
        f"re-run the ensemble, or delete {ensemble_file.name} to predict with every member folder beside it "
        "at weight 1"
    )
    listed = _read_json_object(ensemble_file, fix).get("members")
    if not isinstance(listed, list) or not listed:
        raise EnsembleError(f"{ensemble_file}: no 'members' list; {fix}")
    for index, item in enumerate(listed):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise EnsembleError(f"{ensemble_file}: members[{index}] has no 'path'; {fix}")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise EnsembleError(
                f"{ensemble_file}: members[{index}] has weight {weight!r}, not a positive number; {fix}"
            )
    return listed


def _check_model_path(model_path: Path) -> None:
    model_path = Path(model_path)
    if not model_path.is_dir():
        found = "a file, not a folder" if model_path.exists() else "no such folder"
        raise EnsembleError(
            f"--model (model_path) {model_path}: {found}; pass <output_dir>/best/ for the ensemble or "
            "<output_dir>/best/<name>/ for one member"
        )


def _check_member_weights(members: list[MemberInfo]) -> None:
    """Every member's weights exist and have a readable safetensors header (read without the tensors)."""
    for member in members:
        weights = Path(member.path) / WEIGHTS_FILE
        if not weights.is_file():
            raise EnsembleError(f"member {member.name} ({member.path}) has no {WEIGHTS_FILE}; {REPUBLISH}")
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise EnsembleError(f"{weights} is not a readable safetensors file ({error}); {REPUBLISH}") from error


def _check_output_csv(output_csv: Path) -> None:
    """The CSV can be written: not a folder, below folders (missing ones are created), writable."""
    if output_csv.is_dir():
        raise EnsembleError(
            f"--output (output_csv) {output_csv} is a folder; pass a file name such as {output_csv / 'predictions.csv'}"
        )
    if output_csv.exists():
        if not os.access(output_csv, os.W_OK):
            raise EnsembleError(
                f"--output (output_csv) {output_csv}: cannot overwrite it: permission denied; pass another file"
            )
        return
    existing = next(p for p in output_csv.parents if p.exists())
    if not existing.is_dir():
        raise EnsembleError(
            f"--output (output_csv) {output_csv}: {existing} is a file, not a folder; "
            "pass a path whose parents are folders"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EnsembleError(
            f"--output (output_csv) {output_csv}: cannot write in {existing}: permission denied; "
            "choose a folder you can write to"
        )


def _load_member_model(member: MemberInfo):
    from lib.model import ASTMeanPoolClassifier

    try:
        return ASTMeanPoolClassifier.from_pretrained(member.path)
    except (OSError, ValueError) as error:
        raise EnsembleError(f"member {member.name} ({member.path}) cannot be loaded: {error}; {REPUBLISH}") from error
