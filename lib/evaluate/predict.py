"""Predict wav files with a published member or an ensemble, to a CSV.

Every path is checked before a model is loaded; clips are featurised as for training, logits computed under
the runtime's autocast, calibrated by each member's temperature and soft-voted with the ensemble's weights.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from lib.config import PredictConfig
from lib.core.errors import EnsembleError
from lib.core.guards import check_output_file
from lib.core.layout import ENSEMBLE_FILE, MEMBER_FILE, ONNX_FILE, WEIGHTS_FILE
from lib.core.runtime import Runtime, resolve_runtime
from lib.data.audio import AUDIO_SUFFIXES
from lib.data.features import FeatureParams, featurize, make_feature_extractor
from lib.data.scan import format_bad_files
from lib.evaluate.calibration import softmax
from lib.evaluate.ensemble import soft_vote
from lib.evaluate.export import export_metadata, onnx_session, read_metadata, require_exporter
from lib.evaluate.inference import batch_logits
from lib.evaluate.members import (
    REPUBLISH,
    MemberInfo,
    check_compatible,
    ensemble_thresholds,
    load_member_model,
    resolve_members,
)
from lib.evaluate.metrics import detailed_report, summary_metrics
from lib.evaluate.multilabel import sigmoid

logger = logging.getLogger(__name__)
# An existing --output is overwritten only if it is a predictions CSV astft wrote (a .csv, .tsv or .txt whose
# first line is the header below, as every astft version wrote it), or empty; never e.g. notes, a .wav or weights.
OUTPUT_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
CSV_HEADER_START = ("file", "predicted_label")
MULTI_LABEL_HEADER_START = ("file", "predicted_labels")  # a multi-label model's: every label at its threshold
LABEL_JOIN = ";"  # between a multi-label clip's predicted labels
MULTI_LABEL_NOT_SCORED = (
    "a multi-label model is not scored against class folders (a clip's several labels are several folders, each "
    "copy predicted as its own row): the member's metrics.json has its validation and test scores"
)
CSV_PROBABILITY_PREFIX = "prob_"
# A member whose calibrated probabilities all lie this close to 1 / classes says nothing about the clips.
CHANCE_TOLERANCE = 1e-3
PREPROCESSOR_FILE = "preprocessor_config.json"
# preprocessor_config.json's ASTFeatureExtractor key -> member.json's feature_params key (what predict uses)
PREPROCESSOR_KEYS = {
    "sampling_rate": "sample_rate_hz",
    "num_mel_bins": "num_mel_bins",
    "max_length": "max_frames",
    "do_normalize": "normalize",
    "mean": "mean",
    "std": "std",
}


def predict_to_csv(config: PredictConfig) -> dict:
    """What `astft predict` and the astft-predict flow run: predict_files on the config's device."""
    return predict_files(
        config.model_path, config.input_path, config.output_csv,
        resolve_runtime(config.device), config.batch_size, config.skip_bad_files, config.backend,
    )


def predict_files(
    model_path: Path,
    input_path: Path,
    output_csv: Path,
    runtime: Runtime,
    batch_size: int = 32,
    skip_bad_files: bool = False,
    backend: str = "torch",
) -> dict:
    """Write file, predicted label and per-class probabilities for every clip; return a summary.

    backend "onnxruntime": the graph astft export wrote into model_path (probabilities.onnx) instead of PyTorch."""
    # inputs and output first: a bad path must not cost a model load and a whole inference pass
    _check_model_path(model_path)
    members = resolve_members(model_path)
    check_compatible(members)
    _check_member_weights(members)
    label_names, multi_label = members[0].label_names, members[0].multi_label
    if multi_label and backend == "onnxruntime":
        raise EnsembleError("--backend onnxruntime: multi-label models are not exported yet (astft export writes a "
                            "softmax vote); use --backend torch")
    files = list_inputs(input_path)
    output_csv = Path(output_csv)
    _check_output_csv(output_csv)
    _check_output_is_not_read(output_csv, model_path, input_path, files)
    warnings = [warning for member in members for warning in _preprocessor_disagreement(member)]
    bad: dict[str, str] = {}
    if backend == "onnxruntime":
        voted, readable = _onnx_vote(exported_graph(Path(model_path), members), members[0].feature_params, files,
                                     batch_size, bad)
    else:
        probabilities, readable = _torch_probabilities(members, files, runtime, batch_size, bad)
        for member, member_probabilities in zip(members, probabilities, strict=True):
            warnings += [] if multi_label else _at_chance(member, member_probabilities[readable])
        voted = soft_vote(probabilities, [member.weight for member in members])
    thresholds = vote_thresholds(Path(model_path), members, warnings) if multi_label else None

    def answer(row: np.ndarray) -> str:
        """The predicted label, or a multi-label clip's labels at or above their thresholds (none: empty)."""
        if thresholds is None:
            return label_names[int(row.argmax())]
        return LABEL_JOIN.join(name for name, p, t in zip(label_names, row, thresholds, strict=True) if p >= t)

    if bad and not skip_bad_files:
        raise EnsembleError(
            format_bad_files(dict(sorted(bad.items())), during="reading the inputs", setting="skip_bad_files")
        )
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    with output_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        start = MULTI_LABEL_HEADER_START if multi_label else CSV_HEADER_START
        writer.writerow([*start, *[f"{CSV_PROBABILITY_PREFIX}{name}" for name in label_names]])
        for index, row in zip(np.flatnonzero(readable), voted[readable], strict=True):
            writer.writerow([str(files[index]), answer(row), *[f"{p:.6f}" for p in row]])
    for path, reason in bad.items():
        logger.warning("skipped %s: %s", path, reason)
    kept = np.flatnonzero(readable)
    if multi_label:
        scored = (None, MULTI_LABEL_NOT_SCORED if in_subfolders(Path(input_path), files) else None)
    else:
        scored = scores_by_folder(Path(input_path), [files[index] for index in kept], voted[kept], label_names)
    return {
        "backend": backend,
        "csv": str(output_csv), "predicted": int(readable.sum()), "skipped": len(bad),
        "members": [member.name for member in members],
        "weights": {member.name: member.weight for member in members},
        "temperatures": {member.name: member.temperature or 1.0 for member in members},
        "not_in_ensemble": members_not_listed(Path(model_path), members),
        **dict(zip(("scores", "not_scored"), scored, strict=True)),
        "ensemble_file": (Path(model_path) / ENSEMBLE_FILE).is_file(),
        "multi_label": multi_label,
        "thresholds": None if thresholds is None else dict(zip(label_names, map(float, thresholds), strict=True)),
        "first_rows": [(str(files[index]), answer(voted[index]), float(voted[index].max())) for index in kept[:5]],
        "warnings": warnings,
    }


def _torch_probabilities(
    members: list[MemberInfo], files: list[Path], runtime: Runtime, batch_size: int, bad: dict[str, str]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's calibrated probabilities of every file (zeros where unreadable), and which files were read."""
    label_names = members[0].label_names
    models = [load_member_model(member).to(runtime.device).eval() for member in members]
    keys = [member.feature_params.model_dump_json() for member in members]  # members sharing features share a key
    extractors = {key: make_feature_extractor(member.feature_params) for key, member in zip(keys, members, strict=True)}
    probabilities = [np.zeros((len(files), len(label_names))) for _ in members]
    readable = np.ones(len(files), dtype=bool)
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        # Each clip is featurised once per distinct feature parameters, however many members share them.
        features: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        for member, key, model, member_probabilities in zip(members, keys, models, probabilities, strict=True):
            if key not in features:
                values, kept = featurize(batch, member.feature_params, extractors[key], bad)
                readable[start : start + len(batch)] &= np.isin(np.arange(len(batch)), kept)
                features[key] = (torch.from_numpy(values), start + np.asarray(kept, dtype=int))
            values, rows = features[key]
            if len(rows):
                logits = batch_logits(model, values, runtime)
                # calibrated: the member's temperature (1 for members published before calibration); multi-label:
                # a sigmoid per class
                member_probabilities[rows] = sigmoid(logits) if member.multi_label else softmax(
                    logits, member.temperature or 1.0)
    return probabilities, readable


def vote_thresholds(model_path: Path, members: list[MemberInfo], warnings: list[str]) -> np.ndarray:
    """The thresholds a multi-label vote is cut at: those ensemble.json fitted for it, a lone member's own, or
    (members without an ensemble.json, e.g. a cross-validation's folds) the weighted mean of theirs, said in a
    warning."""
    ensemble_file = model_path / ENSEMBLE_FILE
    if ensemble_file.is_file():
        return np.array(ensemble_thresholds(ensemble_file, members[0].label_names))
    if len(members) == 1:
        return np.asarray(members[0].thresholds)
    weights = np.array([member.weight for member in members])
    warnings.append(_warn(
        f"{len(members)} multi-label members voted without thresholds fitted for their vote ({ENSEMBLE_FILE}): "
        "each class is cut at the weighted mean of the members' thresholds; astft ensemble fits the vote's own"
    ))
    return weights @ np.array([member.thresholds for member in members]) / weights.sum()


def exported_graph(model_path: Path, members: list[MemberInfo]) -> Path:
    """model_path's probabilities.onnx, made by astft export from these very members, weights and temperatures."""
    require_exporter()
    graph = model_path / ONNX_FILE
    if not graph.is_file():
        raise EnsembleError(
            f"--backend onnxruntime: no {ONNX_FILE} in {model_path}; export it first: astft export --model {model_path}"
        )
    if read_metadata(graph)["members"] != export_metadata(members, members[0].feature_params)["members"]:
        raise EnsembleError(
            f"{graph} was exported from other members, weights or temperatures than {model_path} holds now (a "
            "member was published, or the ensemble evaluated, again since): export it again, "
            f"astft export --model {model_path}"
        )
    return graph


def _onnx_vote(graph: Path, params: FeatureParams, files: list[Path], batch_size: int, bad: dict[str, str]
               ) -> tuple[np.ndarray, np.ndarray]:
    """The exported graph's calibrated vote of every file (zeros where unreadable), and which files were read."""
    session, extractor = onnx_session(graph), make_feature_extractor(params)
    voted, readable = None, np.ones(len(files), dtype=bool)
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        values, kept = featurize(batch, params, extractor, bad)
        readable[start : start + len(batch)] &= np.isin(np.arange(len(batch)), kept)
        if len(kept):
            probabilities = session.run(None, {"input_values": values.astype(np.float32)})[0]
            if voted is None:
                voted = np.zeros((len(files), probabilities.shape[1]))
            voted[start + np.asarray(kept)] = probabilities
    return (voted if voted is not None else np.zeros((len(files), 0))), readable


def members_not_listed(model_path: Path, members: list[MemberInfo]) -> list[str]:
    """Member folders in an ensemble folder that its ensemble.json leaves out (not selected, or published after
    it was written): predict ignores them, and says so."""
    if not (model_path / ENSEMBLE_FILE).is_file():
        return []
    used = {Path(member.path).name for member in members}
    return sorted(
        entry.name for entry in model_path.iterdir()
        if not entry.name.startswith(".") and (entry / MEMBER_FILE).is_file() and entry.name not in used
    )


def scores_by_folder(input_path: Path, files: list[Path], probabilities: np.ndarray, label_names: list[str]
                     ) -> tuple[dict | None, str | None]:
    """Accuracy and the confusion matrix when every clip lies in a class subfolder of input_path named after one of
    the labels (input_path/<label>/...wav, a validation folder's layout); else None and why not (None: a file)."""
    if not input_path.is_dir() or not files:
        return None, None
    parts = [path.relative_to(input_path).parts for path in files]
    loose = sum(len(part) == 1 for part in parts)
    if loose == len(files):
        return None, None  # a flat folder of clips: nothing claims to know their classes
    if loose:
        return None, f"{loose} clip(s) lie directly in {input_path}, outside any class folder"
    unknown = sorted({part[0] for part in parts} - set(label_names))
    if unknown:
        return None, f"folders {unknown} are not labels of the model ({', '.join(label_names)})"
    labels = np.array([label_names.index(part[0]) for part in parts])
    predictions = probabilities.argmax(axis=-1)
    return {**summary_metrics(labels, predictions), "num_samples": len(files),
            **detailed_report(labels, predictions, label_names)}, None


def in_subfolders(input_path: Path, files: list[Path]) -> bool:
    """Whether input_path is a folder with clips in subfolders of it (class folders, it may be)."""
    return input_path.is_dir() and any(len(path.relative_to(input_path).parts) > 1 for path in files)


def list_inputs(input_path: Path) -> list[Path]:
    """The .wav file, or every .wav file under the folder (sorted, hidden files and folders skipped)."""
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise EnsembleError(f"--input (input_path) {input_path}: no such file or folder")
    files = sorted(
        p
        for p in input_path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in AUDIO_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(input_path).parts)
    )
    if not files:
        raise EnsembleError(f"--input (input_path) {input_path}: no audio files (.wav, .flac, .ogg, .mp3) found")
    return files


# --- checks run before any model is loaded ------------------------------------------------------


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
    check_output_file(output_csv, "--output (output_csv)", "predictions.csv", EnsembleError)


def _check_output_is_not_read(output_csv: Path, model_path: Path, input_path: Path, files: list[Path]) -> None:
    """The CSV must not overwrite what predict reads (a member's files, an input clip) or any file but an empty one
    or a predictions CSV astft wrote."""
    target = output_csv.resolve()
    if Path(model_path).is_dir() and target.is_relative_to(Path(model_path).resolve()):
        raise EnsembleError(
            f"--output (output_csv) {output_csv} is inside --model (model_path) {model_path}: writing there could "
            "overwrite a member's files; write the CSV outside the model folder"
        )
    if any(target == Path(path).resolve() for path in files):
        raise EnsembleError(f"--output (output_csv) {output_csv} is an input clip; pass another file name")
    if not output_csv.exists():
        return
    if output_csv.suffix.lower() not in OUTPUT_SUFFIXES:
        raise EnsembleError(
            f"--output (output_csv) {output_csv} exists and is not a CSV ({output_csv.suffix or 'no suffix'}); "
            "predict would overwrite it: pass a new file name ending in .csv, or delete the file first"
        )
    found = _first_line(output_csv)
    if found is not None:
        raise EnsembleError(
            f"--output (output_csv) {output_csv} exists and is not a predictions CSV astft wrote ({found}); "
            "predict overwrites only its own CSVs: choose another --output, or delete the file first"
        )


def _first_line(path: Path) -> str | None:
    """None if the file is empty or astft's predictions CSV (first line: file,predicted_label,prob_...);
    else what its first line is, for the error."""
    try:
        with path.open("rb") as handle:
            head = handle.read(65536)
    except OSError as error:
        return f"it cannot be read: {error.strerror or error}"
    if not head:
        return None  # nothing to lose
    try:
        line = head.decode("utf-8").splitlines()[0]
    except (UnicodeDecodeError, IndexError):
        return "it is not UTF-8 text"
    cells = next(csv.reader([line]), [])
    if (
        tuple(cells[:2]) in (CSV_HEADER_START, MULTI_LABEL_HEADER_START)
        and len(cells) > 2
        and all(cell.startswith(CSV_PROBABILITY_PREFIX) for cell in cells[2:])
    ):
        return None
    shown = line if len(line) <= 60 else line[:57] + "..."
    return f"its first line is {shown!r}, not file,predicted_label,prob_..."


# --- warnings: what predict uses although it looks wrong ----------------------------------------


def _preprocessor_disagreement(member: MemberInfo) -> list[str]:
    """A warning if the member's preprocessor_config.json contradicts member.json's feature_params.

    predict featurises with member.json's feature_params (the features the member was trained and evaluated on);
    preprocessor_config.json is only what other tools (transformers' pipelines) would read.
    """
    path = Path(member.path) / PREPROCESSOR_FILE
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return [_warn(
            f"member {member.name} ({member.path}): {PREPROCESSOR_FILE} cannot be read ({error}); predict uses "
            "member.json's feature_params; re-publish the member to rewrite it"
        )]
    if not isinstance(saved, dict):
        return []
    used = member.feature_params.model_dump()
    disagreeing = [
        f"{key} {saved[key]!r} vs {ours} {used[ours]!r}"
        for key, ours in PREPROCESSOR_KEYS.items()
        if key in saved and not _same(saved[key], used[ours])
    ]
    if not disagreeing:
        return []
    return [_warn(
        f"member {member.name} ({member.path}): {PREPROCESSOR_FILE} disagrees with member.json's feature_params "
        f"({'; '.join(disagreeing)}); predict uses member.json's, the features the member was trained on: "
        f"re-publish the member if {PREPROCESSOR_FILE} is the one that is right"
    )]


def _same(saved: object, used: object) -> bool:
    if isinstance(saved, bool) or isinstance(used, bool):
        return saved == used
    if isinstance(saved, int | float) and isinstance(used, int | float):
        return math.isclose(saved, used, rel_tol=1e-6, abs_tol=1e-9)
    return saved == used


def _at_chance(member: MemberInfo, probabilities: np.ndarray) -> list[str]:
    """A warning if the member's calibrated probabilities are uniform on every clip predicted."""
    if not len(probabilities) or np.abs(probabilities - 1 / probabilities.shape[1]).max() > CHANCE_TOLERANCE:
        return []
    return [_warn(
        f"member {member.name} is at chance on these clips (temperature {member.temperature or 1.0:g}): every "
        f"probability is 1/{probabilities.shape[1]} within {CHANCE_TOLERANCE:g}, so its labels are ties broken "
        "arbitrarily and its probabilities carry no information; retrain or drop it"
    )]


def _warn(message: str) -> str:
    logger.warning("%s", message)
    return message
