"""Published members as predict, export and ensembles read them: each member's files checked (read_member), a member
or ensemble folder resolved to its members (resolve_members, with ensemble.json's weights, temperatures and
versions), their compatibility checked, a member's model loaded with finite weights.

Every malformed file is an EnsembleError naming the file and the fix (most often: re-publish the member).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from lib.core.errors import EnsembleError, NonFiniteError
from lib.core.guards import check_finite_tensors
from lib.core.layout import CALIBRATION_FILE, ENSEMBLE_FILE, MEMBER_FILE, PRETRAIN_FILE, THRESHOLDS_FILE
from lib.data.features import FeatureParams
from lib.model.classifier import MULTI_LABEL, ASTMeanPoolClassifier

REPUBLISH = "re-publish the member (re-run astft finetune, or astft ensemble, for it)"


class MemberInfo(BaseModel):
    name: str
    path: str
    label_names: list[str]
    feature_params: FeatureParams
    feature_cache_key: str | None = None
    freezing: str | None = None
    weight: float = Field(1.0, gt=0)
    # softmax(logits / temperature); None: a member published before calibration (taken as 1 by predict)
    temperature: float | None = Field(None, gt=0)
    multi_label: bool = False  # one sigmoid per class (config.problem_type), predicted at or above its thresholds
    thresholds: list[float] | None = None  # a multi-label member's, per class (thresholds.json)


def read_member(path: Path, weight: float = 1.0, temperature: float | None = None) -> MemberInfo:
    """A published member; its temperature is the given one, else the one in its calibration.json."""
    path = Path(path)
    config_file, member_file = path / "config.json", path / MEMBER_FILE
    if not config_file.is_file() or not member_file.is_file():
        raise EnsembleError(
            f"{path} is not a published member (needs config.json and {MEMBER_FILE}); pass a folder that "
            "astft finetune/ensemble published under <output_dir>/best/" + _encoder_hint(path)
        )
    config, member = _read_member_files(config_file, member_file)
    if temperature is None and (path / CALIBRATION_FILE).is_file():
        temperature = _positive_number(
            _read_json_object(path / CALIBRATION_FILE, REPUBLISH).get("temperature"), path / CALIBRATION_FILE,
            "'temperature' is", REPUBLISH,
        )
    id2label = config["id2label"]
    multi_label = config.get("problem_type") == MULTI_LABEL
    return MemberInfo(
        name=member.get("name", path.name),
        path=str(path),
        label_names=[id2label[str(i)] for i in range(len(id2label))],
        feature_params=FeatureParams.model_validate(member["feature_params"]),
        feature_cache_key=member.get("feature_cache_key"),
        freezing=member.get("freezing"),
        weight=weight,
        temperature=temperature,
        multi_label=multi_label,
        thresholds=_read_thresholds(path, [id2label[str(i)] for i in range(len(id2label))]) if multi_label else None,
    )


def _read_thresholds(path: Path, label_names: list[str]) -> list[float]:
    """A multi-label member's thresholds.json: a probability in [0, 1] per class of its label map."""
    file = path / THRESHOLDS_FILE
    if not file.is_file():
        raise EnsembleError(f"{path} is a multi-label member without {THRESHOLDS_FILE}; {REPUBLISH}")
    return checked_thresholds(_read_json_object(file, REPUBLISH), label_names, file, REPUBLISH)


def ensemble_thresholds(ensemble_file: Path, label_names: list[str]) -> list[float]:
    """The thresholds ensemble.json fitted for a multi-label vote, checked as a member's are."""
    fix = f"re-run the ensemble (astft ensemble), or delete {ensemble_file.name} to vote every member folder"
    fitted = _read_json_object(ensemble_file, fix).get("thresholds")
    if not isinstance(fitted, dict):
        raise EnsembleError(f"{ensemble_file}: no 'thresholds' for its multi-label members' vote; {fix}")
    return checked_thresholds(fitted, label_names, ensemble_file, fix)


def checked_thresholds(content: dict[str, Any], label_names: list[str], file: Path, fix: str) -> list[float]:
    """content's 'thresholds', class -> probability, for exactly these classes, in their order."""
    given = content.get("thresholds")
    if not isinstance(given, dict) or sorted(given) != sorted(label_names):
        raise EnsembleError(f"{file}: 'thresholds' must name each of the classes {label_names}; {fix}")
    for name in label_names:
        value = given[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise EnsembleError(f"{file}: the threshold of {name!r} is {value!r}, not a probability between 0 and 1; "
                                f"{fix}")
    return [float(given[name]) for name in label_names]


def check_compatible(members: list[MemberInfo], same_validation_set: bool = False) -> None:
    """Every member must share the label order (and, to vote on stored logits, the validation features)."""
    if not members:
        raise EnsembleError("an ensemble needs at least one member")
    reference = members[0]
    for member in members[1:]:
        if member.multi_label != reference.multi_label:
            task = {True: "multi-label", False: "single-label"}
            raise EnsembleError(
                f"member {member.name} is {task[member.multi_label]} but {reference.name} is "
                f"{task[reference.multi_label]}; an ensemble's members share model.task"
            )
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


def load_member_model(member: MemberInfo) -> ASTMeanPoolClassifier:
    """The member's classifier, its weights checked finite (a NaN weight would make every label the first class)."""
    try:
        model = ASTMeanPoolClassifier.from_pretrained(member.path)
    except (OSError, ValueError) as error:
        raise EnsembleError(f"member {member.name} ({member.path}) cannot be loaded: {error}; {REPUBLISH}") from error
    # A NaN weight makes every probability NaN and every label the first class: refuse, as publishing does.
    try:
        check_finite_tensors(model.named_parameters(), f"member {member.name} ({member.path})", REPUBLISH)
    except NonFiniteError as error:
        raise EnsembleError(str(error)) from error
    return model


def member_version(path: Path) -> str:
    """Which publish of a member a folder is: the version folder best/<name> links to (its own name otherwise)."""
    return Path(os.path.realpath(path)).name


def check_same_version(path: Path, listed: str | None, ensemble_file: Path) -> None:
    """A member published again after ensemble.json was written has other weights and another temperature than
    the vote was chosen with: refused, not mixed (ensemble.json from before astft 0.2 records no version)."""
    if listed is None or not path.exists() or member_version(path) == listed:
        return
    raise EnsembleError(
        f"{path} was published again after {ensemble_file} was written, so the ensemble's weights and temperatures "
        "were chosen for its earlier weights: re-run the ensemble (astft ensemble with the same config evaluates "
        f"the members again), or delete {ensemble_file.name} to vote every member folder at weight 1"
    )


def resolve_members(model_path: Path) -> list[MemberInfo]:
    """A member folder, or an ensemble folder (<output>/best/) of members with an optional ensemble.json."""
    model_path = Path(model_path)
    if (model_path / "config.json").is_file():
        return [read_member(model_path)]
    ensemble_file = model_path / ENSEMBLE_FILE
    if ensemble_file.is_file():
        listed = _read_ensemble_listing(ensemble_file)
        for item in listed:
            check_same_version(model_path / Path(item["path"]).name, item.get("version"), ensemble_file)
        return [
            read_member(model_path / Path(item["path"]).name, item.get("weight", 1.0), item.get("temperature"))
            for item in listed
        ]
    # Hidden entries are publish backups and staging folders, never members.
    members = [
        read_member(p) for p in sorted(model_path.iterdir())
        if not p.name.startswith(".") and (p / MEMBER_FILE).is_file()
    ]
    if not members:
        encoders = sorted(
            p.name for p in model_path.iterdir() if not p.name.startswith(".") and (p / PRETRAIN_FILE).is_file()
        )
        raise EnsembleError(
            f"--model (model_path) {model_path}: neither a member folder nor a folder of members; pass "
            "<output_dir>/best/ for the ensemble or <output_dir>/best/<name>/ for one member"
            + (f". It holds pretrained encoders ({', '.join(encoders)}; astft pretrain), which classify nothing: "
               f"fine-tune a classifier from one with astft finetune --ssl-checkpoint {model_path / encoders[0]} ..."
               if encoders else "")
        )
    return members


def _encoder_hint(path: Path) -> str:
    """For a published encoder passed where a member is expected: what it is, and what to do with it."""
    if not (path / PRETRAIN_FILE).is_file():
        return ""
    return (
        f". {path} is a pretrained encoder (astft pretrain), which classifies nothing; fine-tune a classifier from "
        f"it with astft finetune --ssl-checkpoint {path} ..."
    )


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
    """ensemble.json's members: each with a 'path' and, if given, a positive finite 'weight' and 'temperature'."""
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
        for key in ("weight", "temperature"):
            if item.get(key) is not None:
                _positive_number(item[key], ensemble_file, f"members[{index}] has {key}", fix)
    return listed


def _positive_number(value: Any, file: Path, what: str, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise EnsembleError(f"{file}: {what} {value!r}, not a positive number; {fix}")
    return float(value)
