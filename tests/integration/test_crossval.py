"""astft crossval: one member per fold on one feature cache, the mean over folds, a rerun keeping finished folds."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from prefect import flow

import flows.ensemble
from lib.config import CrossvalConfig, DataConfig, FeatureConfig, ModelConfig, TrainingConfig
from lib.data.features import load_split
from tests.layouts import make_esc50

pytestmark = pytest.mark.slow


def esc50_crossval(root, ssl_checkpoint) -> CrossvalConfig:
    return CrossvalConfig(
        name="cv",
        output_dir=root / "out",
        data=DataConfig(layout="esc50", root=root / "esc50", cache_dir=root / "cache"),
        features=FeatureConfig(clip_seconds=0.6, max_frames=64),  # the tiny checkpoint's input
        model=ModelConfig(ssl_checkpoint=ssl_checkpoint),
        training=TrainingConfig(epochs=1, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3,
                                warmup_steps=0, device="cpu"),
    )


def test_crossval_trains_each_fold_on_the_others_reports_the_mean_and_a_rerun_keeps_finished_folds(
    prefect_harness, tmp_path, ssl_checkpoint, monkeypatch
):
    from flows.crossval import CrossvalFoldsFailed, crossval

    make_esc50(tmp_path / "esc50", per_fold=2, seconds=0.6)
    config = esc50_crossval(tmp_path, ssl_checkpoint)
    best = tmp_path / "out" / "best"
    real_member = flows.ensemble.member

    @flow(name="astft-member")
    def killed_after_two_folds(plan, features, encoder):
        if not plan.config.name.endswith(("fold-1", "fold-2")):
            raise RuntimeError("killed")
        return real_member.fn(plan, features, encoder)

    monkeypatch.setattr(flows.ensemble, "member", killed_after_two_folds)
    with pytest.raises(CrossvalFoldsFailed, match="3 of 5 folds failed"):
        crossval(config)
    first_two = {fold: os.path.realpath(best / f"cv-fold-{fold}") for fold in (1, 2)}
    assert sorted(json.loads((best / "crossval.json").read_text())["folds"]) == ["fold-1", "fold-2"]

    monkeypatch.setattr(flows.ensemble, "member", real_member)
    summary = crossval(config)
    assert {fold: os.path.realpath(best / f"cv-fold-{fold}") for fold in (1, 2)} == first_two  # not retrained
    assert sorted(summary["folds"]) == [f"fold-{n}" for n in range(1, 6)] and not summary["failed"]
    accuracies = [summary["folds"][f"fold-{n}"]["metrics"]["accuracy"] for n in range(1, 6)]
    assert summary["validation"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["validation"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert json.loads((best / "crossval.json").read_text())["validation"] == summary["validation"]


def test_no_fold_trains_on_its_own_clips_and_the_folds_share_one_feature_cache(tmp_path):
    from lib.data.features import FeatureParams, build_feature_cache
    from lib.data.layouts import dataset_folds
    from lib.data.scan import scan_listing

    expected = make_esc50(tmp_path / "esc50", per_fold=1, seconds=0.3)
    config = esc50_crossval(tmp_path, tmp_path / "unused")
    manifest = scan_listing(dataset_folds(config.data).all_folds())
    assert manifest.splits == tuple(f"fold-{n}" for n in range(1, 6))
    features, _ = build_feature_cache(manifest, FeatureParams(clip_seconds=0.3, max_frames=64, num_mel_bins=64),
                                      tmp_path / "cache")
    for fold in manifest.splits:
        view = features.for_fold(fold)
        train = set(load_split(view, "train").with_format(None)["path"])
        validation = set(load_split(view, "validation").with_format(None)["path"])
        held_out = {str(tmp_path / "esc50" / path) for path in {**expected["train"], **expected["validation"]}
                    if path.startswith(f"audio/{fold.split('-')[1]}-")}
        assert validation == held_out and not train & validation
        assert len(train) + len(validation) == 20 and view.path == features.path


def test_dispatching_folds_to_a_deployment_the_server_lacks_is_one_line(prefect_harness, tmp_path, ssl_checkpoint):
    from flows.crossval import crossval
    from lib.core.errors import ConfigError

    make_esc50(tmp_path / "esc50", per_fold=1, seconds=0.3)
    config = esc50_crossval(tmp_path, ssl_checkpoint)
    config.dispatch = "deployments"
    with pytest.raises(ConfigError, match=r"member_deployment astft-finetune/member is not on this Prefect server"):
        crossval(config)
    assert not (tmp_path / "out" / "best" / "crossval.json").exists()


def test_a_dispatched_run_still_waiting_is_cancelled_when_the_process_that_waits_for_it_ends(
    prefect_harness, monkeypatch
):
    from types import SimpleNamespace

    from prefect.client.orchestration import get_client

    import tasks.ensemble

    @flow(name="waits-for-a-worker")
    def never_run():
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(never_run)  # scheduled, as a deployment's run that no worker takes
    ended = SimpleNamespace(main_thread=lambda: SimpleNamespace(is_alive=lambda: False))
    monkeypatch.setattr(tasks.ensemble, "threading", ended)  # as after a Ctrl-C: the main thread has returned
    assert tasks.ensemble.wait_for_run(run.id).is_cancelled()
