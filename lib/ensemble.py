"""Ensembles of published members: reading them, compatibility checks, soft vote, leaderboard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from lib.config import SUMMARY_METRICS
from lib.evaluation import METRICS_FILE, PREDICTIONS_FILE
from lib.features import FeatureParams
from lib.metrics import detailed_report, softmax, summary_metrics

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
