"""ONNX export of a member or of an ensemble: one graph from features to calibrated, soft-voted probabilities.

The graph holds what `astft predict` applies after the network: each member's temperature and the ensemble's
weights (ensemble.json), so onnxruntime gives the same probabilities with no astft code. Its input is the log-mel
features ASTFeatureExtractor makes with the parameters in member.json (recorded in the model's metadata), with a
dynamic batch axis. torch.onnx's exporter does the work (the `export` extra: onnx, onnxscript, onnxruntime);
written here is only the wrapper that puts temperatures and weights in the graph, and the parity check.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from lib.config import DataConfig
from lib.core.errors import ConfigError, EnsembleError
from lib.core.guards import check_output_file
from lib.core.layout import ONNX_FILE, RUN_CONFIG_FILE, WEIGHTS_FILE
from lib.data.features import FeatureParams, featurize, make_feature_extractor
from lib.data.layouts import list_dataset
from lib.data.scan import list_split
from lib.evaluate.members import (
    MemberInfo,
    check_compatible,
    load_member_model,
    member_version,
    resolve_members,
)

logger = logging.getLogger(__name__)

PARITY_CLIPS = 64  # validation clips the parity check runs through both graphs
METADATA_KEY = "astft"  # the model's metadata_props entry: labels, feature parameters, members, weights


class CalibratedVote(torch.nn.Module):
    """sum_i w_i softmax(logits_i / T_i) / sum_i w_i over the members: what predict computes, as one module."""

    def __init__(self, models: list[torch.nn.Module], temperatures: list[float], weights: list[float]):
        super().__init__()
        self.models = torch.nn.ModuleList(models)
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        votes = [
            self.weights[index] * torch.softmax(model(input_values=input_values).logits / self.temperatures[index], -1)
            for index, model in enumerate(self.models)
        ]
        return torch.stack(votes).sum(0)


def require_exporter() -> None:
    """The export extra is installed, else one line saying how to install it."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
    if missing:
        raise ConfigError(
            f"astft export needs {', '.join(missing)} (the export extra): pip install -e '.[export]'"
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def export_onnx(model_path: Path, output: Path | None = None, opset: int = 18) -> dict:
    """Export the member or ensemble at model_path to ONNX (default: <model_path>/probabilities.onnx); the summary
    includes the parity of onnxruntime against PyTorch on up to PARITY_CLIPS validation clips."""
    require_exporter()
    members = resolve_members(Path(model_path))
    check_compatible(members)
    if members[0].multi_label:
        raise EnsembleError(
            f"{model_path}: multi-label members are not exported yet (the graph is a softmax vote); predict with "
            "astft predict --backend torch"
        )
    params = shared_feature_params(members)
    output = Path(output) if output is not None else Path(model_path) / ONNX_FILE
    check_output_file(output, "--output", ONNX_FILE)  # before the export's work, not after it
    vote = CalibratedVote(
        [load_member_model(member).eval() for member in members],
        [member.temperature or 1.0 for member in members], [member.weight for member in members],
    ).eval()
    example = torch.zeros(2, params.max_frames, params.num_mel_bins)
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = output.with_name(f".{output.name}.tmp")
    metadata = export_metadata(members, params)
    try:
        _export(vote, example, staged, opset)
        _write_metadata(staged, metadata)
        staged.replace(output)
    finally:
        staged.unlink(missing_ok=True)  # a failed export leaves nothing behind
    clips, parity = check_parity(output, vote, members, params)
    return {"onnx": str(output), "members": metadata["members"], "parity_clips": clips, "max_abs_difference": parity}


def _export(vote: CalibratedVote, example: torch.Tensor, staged: Path, opset: int) -> None:
    with warnings.catch_warnings():  # torch's own deprecation notices from inside its exporter: nothing to act on
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            vote, (example,), str(staged), input_names=["input_values"], output_names=["probabilities"],
            dynamic_shapes={"input_values": {0: torch.export.Dim("batch")}}, opset_version=opset, dynamo=True,
            verbose=False, external_data=False,
        )


def shared_feature_params(members: list[MemberInfo]) -> FeatureParams:
    """The one set of feature parameters every member takes: a graph has one input."""
    params = {member.feature_params.model_dump_json() for member in members}
    if len(params) > 1:
        raise EnsembleError(
            f"the members take different features ({', '.join(member.name for member in members)}), so they cannot "
            "share one graph input; export each member on its own (astft export --model <best>/<name>)"
        )
    return members[0].feature_params


def export_metadata(members: list[MemberInfo], params: FeatureParams) -> dict:
    """What a reader of the .onnx needs beside the graph: the label order, the features it takes, the vote."""
    return {
        "label_names": members[0].label_names,
        "feature_params": params.model_dump(),
        "members": [
            {"name": member.name, "weight": member.weight, "temperature": member.temperature or 1.0,
             # which weights: the publish (version folder) and the weights file's size and time, so a graph of
             # a member published again, or of weights copied over, is never taken for the member's
             "version": member_version(Path(member.path)), "weights": _weights_stamp(Path(member.path))}
            for member in members
        ],
    }


def _weights_stamp(folder: Path) -> str:
    stat = (folder / WEIGHTS_FILE).stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _write_metadata(path: Path, metadata: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict:
    """The astft metadata of an exported graph (EnsembleError where it has none: not exported by astft)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise EnsembleError(f"{path} has no astft metadata: export it with astft export --model <member or best/>")


def onnx_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_parity(path: Path, vote: CalibratedVote, members: list[MemberInfo], params: FeatureParams
                 ) -> tuple[int, float]:
    """(clips, max |p_onnx - p_torch|) on up to PARITY_CLIPS of the first member's validation clips, or on random
    features where that folder is gone."""
    features = _validation_features(members[0], params)
    session = onnx_session(path)
    onnx_probabilities = session.run(None, {"input_values": features})[0]
    with torch.no_grad():
        torch_probabilities = vote(torch.from_numpy(features)).numpy()
    return len(features), float(np.abs(onnx_probabilities - torch_probabilities).max())


def _validation_features(member: MemberInfo, params: FeatureParams) -> np.ndarray:
    try:
        run_config = json.loads((Path(member.path) / RUN_CONFIG_FILE).read_text())
        data = run_config["data"]
        if data.get("layout", "folders") == "folders":  # its validation folder alone (train's may be gone)
            validation, _ = list_split(Path(data["validation_dir"]), "validation", warn=False)
        else:
            validation = list_dataset(DataConfig.model_validate(data), warn=False).classes["validation"]
        files = sorted(path for paths in validation.values() for path in paths)[:PARITY_CLIPS]
        values, _ = featurize(files, params, make_feature_extractor(params), bad={})
    except (OSError, ValueError, KeyError, TypeError):
        values = np.zeros((0, params.max_frames, params.num_mel_bins), np.float32)
    if len(values):
        return values.astype(np.float32)
    logger.warning("the validation clips of %s are not readable: the parity check uses random features", member.name)
    return np.random.default_rng(0).standard_normal((8, params.max_frames, params.num_mel_bins), dtype=np.float32)
