"""Ensembles of published members: reading them, compatibility checks, soft vote, leaderboard.

About 470 lines: reading and checking the published files (read_member .. _positive_number) is the seam to split
along next; kept here for now because predict, export and the tests import them from this module.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from lib.core.errors import EnsembleError, NonFiniteError
from lib.core.guards import check_finite_tensors
from lib.core.layout import (
    AVERAGE_PRECISION_PLOT_FILE,
    CALIBRATION_FILE,
    ENSEMBLE_FILE,
    LEADERBOARD_PLOT_FILE,
    MEMBER_FILE,
    PRECISION_RECALL_PLOT_FILE,
    PREDICTIONS_FILE,
    PRETRAIN_FILE,
    RELIABILITY_PLOT_FILE,
    TEST_PREDICTIONS_FILE,
    THRESHOLDS_FILE,
)
from lib.data.features import FeatureParams
from lib.evaluate.calibration import (
    calibration_report,
    fit_temperature,
    greedy_selection,
    softmax,
)
from lib.evaluate.evaluation import split_report
from lib.evaluate.metrics import summary_metrics
from lib.evaluate.plots import leaderboard_plot, reliability_plot
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


def soft_vote(probabilities: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Weighted mean of per-member class probabilities (clips x classes)."""
    weights = np.ones(len(probabilities)) if weights is None else np.asarray(weights, dtype=np.float64)
    stacked = np.stack(probabilities).astype(np.float64)
    return np.tensordot(weights / weights.sum(), stacked, axes=1)


def weighted_mean(probabilities: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """soft_vote over the named members in `weights` (the same vote predict casts)."""
    return soft_vote([probabilities[name] for name in weights], list(weights.values()))


def _stored_logits(members: list[MemberInfo]) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """split -> member -> logits, and split -> labels: validation always, test when every member has it."""
    files = {"validation": PREDICTIONS_FILE, "test": TEST_PREDICTIONS_FILE}
    if not all((Path(member.path) / TEST_PREDICTIONS_FILE).is_file() for member in members):
        del files["test"]
    logits: dict[str, dict[str, np.ndarray]] = {split: {} for split in files}
    labels: dict[str, np.ndarray] = {}
    for split, file in files.items():
        for member in members:
            stored = np.load(Path(member.path) / file)
            labels.setdefault(split, stored["labels"])
            if not np.array_equal(labels[split], stored["labels"]):
                raise EnsembleError(
                    f"member {member.name} was scored on {split} clips in another order than {members[0].name}; "
                    "re-run the ensemble so every member is evaluated on the same feature cache"
                )
            logits[split][member.name] = stored["logits"]
    return logits, labels


def _scores(probabilities: np.ndarray, uncalibrated: np.ndarray, labels: np.ndarray) -> dict:
    """Summary metrics of calibrated probabilities, and NLL/Brier/ECE before and after calibration."""
    return {
        **summary_metrics(labels, probabilities.argmax(axis=-1)),
        "calibration": {
            "before": calibration_report(uncalibrated, labels),
            "after": calibration_report(probabilities, labels),
        },
    }


def evaluate_ensemble(
    members: list[MemberInfo],
    output_file: Path,
    failed: dict[str, str] | None = None,
    selection: str = "greedy",
    weights: dict[str, float] | None = None,
    thresholds: str = "per_class",
) -> dict:
    """Calibrate, select and soft-vote the members' stored logits; write ensemble.json and its figures.

    Temperatures, the selection and the weights come from validation alone; test (when the members
    have it) is only scored. weights (given in the config) replace the selection. Multi-label members are
    lib.evaluate.multilabel_ensemble's (thresholds: how the vote's are fitted).
    """
    check_compatible(members, same_validation_set=True)
    logits, labels = _stored_logits(members)
    splits, names = list(logits), [member.name for member in members]
    if members[0].multi_label:
        from lib.evaluate.multilabel_ensemble import evaluate_multi_label_ensemble

        info = {member.name: {"path": member.path, "freezing": member.freezing, "thresholds": member.thresholds,
                              "version": member_version(Path(member.path))} for member in members}
        return evaluate_multi_label_ensemble(names, logits, labels, info, output_file, members[0].label_names, failed,
                                             selection, weights, thresholds)
    temperatures = {
        member.name: member.temperature if member.temperature is not None
        else fit_temperature(logits["validation"][member.name], labels["validation"])
        for member in members
    }
    raw = {split: {name: softmax(logits[split][name]) for name in names} for split in splits}
    calibrated = {split: {name: softmax(logits[split][name], temperatures[name]) for name in names} for split in splits}

    method, chosen = _select(selection, weights, calibrated["validation"], labels["validation"])
    equal = dict.fromkeys(names, 1.0)

    freezing = {member.name: member.freezing for member in members}
    member_rows = [
        {"name": name, "kind": "member", "freezing": freezing[name], "weight": chosen.get(name, 0.0),
         "temperature": temperatures[name],
         **{split: _scores(calibrated[split][name], raw[split][name], labels[split]) for split in splits}}
        for name in names
    ]
    member_rows.sort(key=lambda row: (-row["validation"]["accuracy"], row["validation"]["calibration"]["after"]["nll"]))
    best = member_rows[0]
    votes = {split: weighted_mean(calibrated[split], chosen) for split in splits}
    ensemble_rows = [
        {
            "name": label,
            "kind": kind,
            "freezing": None,
            "weight": None,
            "temperature": None,
            **{
                split: _scores(
                    weighted_mean(calibrated[split], vote_weights),
                    weighted_mean(raw[split], vote_weights),
                    labels[split],
                )
                for split in splits
            },
        }
        for label, kind, vote_weights in (
            ("mean of all members", "mean", equal),
            (f"ensemble ({method})", "ensemble", chosen),
        )
    ]
    for row in ensemble_rows:  # against the member with the best validation accuracy, on every split
        row["gain_over_best_member"] = {
            split: {
                "accuracy": row[split]["accuracy"] - best[split]["accuracy"],
                "nll": best[split]["calibration"]["after"]["nll"] - row[split]["calibration"]["after"]["nll"],
            }
            for split in splits
        }
    ensemble_row = ensemble_rows[-1]
    gain = ensemble_row["gain_over_best_member"]
    verdict_split = splits[-1]  # test when there is one: nothing was tuned on it
    result = {
        "label_names": members[0].label_names,
        "selection": method,
        # what predict votes with: the selected members, their weights and temperatures
        "members": [
            {"name": member.name, "path": member.path, "freezing": member.freezing, "weight": chosen[member.name],
             "temperature": temperatures[member.name], "version": member_version(Path(member.path))}
            for member in members if chosen.get(member.name, 0) > 0
        ],
        "leaderboard": member_rows + ensemble_rows,
        "ensemble": {
            "selection": method,
            "weights": {name: weight for name, weight in chosen.items() if weight > 0},
            **{split: {**split_report(votes[split], labels[split], members[0].label_names),
                       "calibration": ensemble_row[split]["calibration"]} for split in splits},
            "best_member": best["name"],
            "gain_over_best_member": gain,
            "beats_best_member": gain[verdict_split]["accuracy"] > 0,
            "verdict": _verdict(method, best, ensemble_row, verdict_split),
        },
        "failed": failed or {},
        "plots": {"leaderboard": LEADERBOARD_PLOT_FILE, "reliability": RELIABILITY_PLOT_FILE},
    }
    output_file = Path(output_file)
    _write_plots(result, calibrated, raw, labels, verdict_split, output_file.parent)
    # Written beside its name and renamed over it: a reader (predict) never sees half a file.
    staged = output_file.with_name(f".{output_file.name}.{os.getpid()}.tmp")
    staged.write_text(json.dumps(result, indent=2))
    os.replace(staged, output_file)
    return result


def _select(
    selection: str, weights: dict[str, float] | None, validation: dict[str, np.ndarray], labels: np.ndarray
) -> tuple[str, dict[str, float]]:
    """(method, member -> weight) from the config's weights, or all members equally, or greedy on validation."""
    if weights is not None:
        return "config weights", {name: float(weights[name]) for name in validation}
    if selection == "all":
        return "all", dict.fromkeys(validation, 1.0)
    return "greedy", {name: float(count) for name, count in greedy_selection(validation, labels).items()}


def _verdict(method: str, best: dict, ensemble: dict, split: str) -> str:
    """One plain sentence: does the ensemble beat the member with the best validation accuracy?"""
    ours, theirs = ensemble[split], best[split]
    gain = ours["accuracy"] - theirs["accuracy"]
    figures = (
        f"{split} accuracy {ours['accuracy']:.4f} vs {theirs['accuracy']:.4f} ({gain:+.4f}), "
        f"NLL {ours['calibration']['after']['nll']:.4f} vs {theirs['calibration']['after']['nll']:.4f}"
    )
    if gain > 0:
        return f"the ensemble ({method}) beats its best member {best['name']}: {figures}"
    return (
        f"the ensemble ({method}) does NOT beat its best member {best['name']}: {figures}; "
        f"serving {best['name']} alone is as accurate"
        + (" or more" if gain < 0 else "")
    )


def _write_plots(result: dict, calibrated: dict, raw: dict, labels: dict, split: str, folder: Path) -> None:
    """leaderboard.png (every row's validation accuracy, as the table leads with it, and test beside it) and
    reliability.png (on `split`: test when there is one) beside ensemble.json."""
    splits = [name for name in ("validation", "test") if name in result["ensemble"]]
    rows = [{"name": row["name"], "kind": row["kind"], **{f"{name} accuracy": row[name]["accuracy"] for name in splits}}
            for row in result["leaderboard"]]
    leaderboard_plot(rows, [f"{name} accuracy" for name in splits], folder / LEADERBOARD_PLOT_FILE)
    best, weights = result["ensemble"]["best_member"], result["ensemble"]["weights"]
    # an ensemble of the best member alone would draw the same curves again, over the member's
    best_label = best if set(weights) != {best} else f"{best} (the ensemble)"
    curves = {
        f"{best_label}, uncalibrated ({split})": (raw[split][best], labels[split]),
        f"{best_label}, calibrated ({split})": (calibrated[split][best], labels[split]),
    }
    if set(weights) != {best}:
        curves |= {
            f"ensemble, uncalibrated ({split})": (weighted_mean(raw[split], weights), labels[split]),
            f"ensemble ({result['selection']}, {split})": (weighted_mean(calibrated[split], weights), labels[split]),
        }
    reliability_plot(curves, folder / RELIABILITY_PLOT_FILE)
    for stale in (AVERAGE_PRECISION_PLOT_FILE, PRECISION_RECALL_PLOT_FILE):  # a multi-label vote's, made here before
        (folder / stale).unlink(missing_ok=True)


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
