"""astft export: a member, or the selected ensemble with its temperatures and weights, as one ONNX graph that
onnxruntime runs to the same probabilities as PyTorch; predict --backend onnxruntime gives the same CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lib.core.errors import EnsembleError
from lib.core.runtime import resolve_runtime
from lib.evaluate.export import export_onnx
from lib.evaluate.predict import predict_files
from tests.factories import make_member

pytestmark = pytest.mark.train  # exports and runs graphs: a few seconds each

LABELS = ["noise_burst", "tone_high", "tone_low"]


def read_csv(path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.DictReader(open(path)))
    return [row["predicted_label"] for row in rows], np.array(
        [[float(row[f"prob_{label}"]) for label in LABELS] for row in rows]
    )


def predict_both_ways(model, clips, tmp_path) -> tuple[tuple, tuple]:
    runtime = resolve_runtime("cpu")
    predict_files(model, clips, tmp_path / "torch.csv", runtime)
    summary = predict_files(model, clips, tmp_path / "onnx.csv", runtime, backend="onnxruntime")
    assert summary["backend"] == "onnxruntime"
    return read_csv(tmp_path / "torch.csv"), read_csv(tmp_path / "onnx.csv")


def test_a_member_exports_with_its_temperature_and_predicts_the_same(tmp_path, dataset_dirs, test_split):
    _, validation = dataset_dirs
    member = make_member(tmp_path / "best", "m", LABELS, validation, seed=1, temperature=0.4)
    summary = export_onnx(member)
    assert summary["onnx"] == str(member / "probabilities.onnx")
    assert summary["parity_clips"] == 18 and summary["max_abs_difference"] < 1e-4  # on its validation clips
    (torch_labels, torch_p), (onnx_labels, onnx_p) = predict_both_ways(member, test_split, tmp_path)
    assert onnx_labels == torch_labels
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)


def test_a_three_member_ensemble_is_one_graph_with_its_weights_and_temperatures(tmp_path, dataset_dirs, test_split):
    _, validation = dataset_dirs
    best = tmp_path / "best"
    members = [make_member(best, f"m{i}", LABELS, validation, seed=i, temperature=t)
               for i, t in ((1, 0.5), (2, 1.0), (3, 2.0))]
    (best / "ensemble.json").write_text(json.dumps({"members": [
        {"name": m.name, "path": str(m), "weight": w, "temperature": t}
        for m, w, t in zip(members, (3.0, 1.0, 2.0), (0.5, 1.0, 2.0), strict=True)
    ]}))
    summary = export_onnx(best)
    assert [m["weight"] for m in summary["members"]] == [3.0, 1.0, 2.0]
    assert summary["max_abs_difference"] < 1e-4
    (torch_labels, torch_p), (onnx_labels, onnx_p) = predict_both_ways(best, test_split, tmp_path)
    assert onnx_labels == torch_labels
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)
    # the ensemble evaluated again with other weights: the graph is stale and predict says so
    listing = json.loads((best / "ensemble.json").read_text())
    listing["members"][0]["weight"] = 1.0
    (best / "ensemble.json").write_text(json.dumps(listing))
    with pytest.raises(EnsembleError, match=r"exported from other members, weights or temperatures .* export it again"):
        predict_files(best, test_split, tmp_path / "stale.csv", resolve_runtime("cpu"), backend="onnxruntime")


def test_members_that_take_different_features_cannot_share_one_graph(tmp_path, dataset_dirs):
    _, validation = dataset_dirs
    best = tmp_path / "best"
    make_member(best, "a", LABELS, validation)
    make_member(best, "b", LABELS, validation, feature_params={"clip_seconds": 0.5})
    with pytest.raises(EnsembleError, match=r"take different features .* export each member on its own"):
        export_onnx(best)


def test_predict_on_onnx_before_any_export_says_how_to_export(tmp_path, dataset_dirs, test_split):
    member = make_member(tmp_path / "best", "m", LABELS, dataset_dirs[1])
    with pytest.raises(EnsembleError, match=r"no probabilities.onnx in .*; export it first: astft export --model"):
        predict_files(member, test_split, tmp_path / "p.csv", resolve_runtime("cpu"), backend="onnxruntime")


def test_the_export_command_prints_the_parity(tmp_path, dataset_dirs, capsys):
    from flows.cli import main

    member = make_member(tmp_path / "best", "m", LABELS, dataset_dirs[1])
    assert main(["export", "--model", str(member)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"exported m (weight 1, temperature 1.000) to {member / 'probabilities.onnx'}"
    assert out[1].startswith("parity on 18 validation clips: max |p_onnx - p_torch| = ")
    assert float(out[1].rsplit("= ", 1)[1]) < 1e-4


def test_a_member_published_again_makes_its_ensemble_refused_not_mixed(tmp_path, dataset_dirs, test_split):
    import os

    best = tmp_path / "best"
    os.rename(make_member(best, "m0", LABELS, dataset_dirs[1], seed=1), best / ".m0.v-a")
    os.symlink(".m0.v-a", best / "m0")  # as publishing links best/<name> to its version folder
    (best / "ensemble.json").write_text(json.dumps({"members": [
        {"name": "m0", "path": str(best / "m0"), "weight": 1.0, "temperature": 1.0, "version": ".m0.v-a"}]}))
    predict_files(best, test_split, tmp_path / "before.csv", resolve_runtime("cpu"))
    os.rename(make_member(tmp_path / "new", "m0", LABELS, dataset_dirs[1], seed=2), best / ".m0.v-b")
    (best / "m0").unlink()
    os.symlink(".m0.v-b", best / "m0")  # published again, e.g. by astft finetune --name m0 alone
    with pytest.raises(EnsembleError, match=r"m0 was published again after .*ensemble.json was written"):
        predict_files(best, test_split, tmp_path / "after.csv", resolve_runtime("cpu"))


def test_weights_copied_over_an_exported_member_make_its_graph_stale(tmp_path, dataset_dirs, test_split):
    import shutil

    member = make_member(tmp_path / "best", "m", LABELS, dataset_dirs[1], seed=1)
    other = make_member(tmp_path / "other", "m", LABELS, dataset_dirs[1], seed=2)
    export_onnx(member)
    shutil.copy(other / "model.safetensors", member / "model.safetensors")
    with pytest.raises(EnsembleError, match=r"exported from other members, weights or temperatures"):
        predict_files(member, test_split, tmp_path / "p.csv", resolve_runtime("cpu"), backend="onnxruntime")


def test_an_export_to_a_folder_is_refused_before_any_work(tmp_path, dataset_dirs, monkeypatch):
    import lib.evaluate.export
    from lib.core.errors import ConfigError

    member = make_member(tmp_path / "best", "m", LABELS, dataset_dirs[1])
    monkeypatch.setattr(lib.evaluate.export, "load_member_model", lambda member: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match=r"--output .* is a folder; pass a file name such as .*probabilities.onnx"):
        export_onnx(member, tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))
