"""Self-supervised pretraining (SSAST masked patches): masks, losses, the unlabeled scan, the checkpoint
layout fine-tuning loads, resume after a kill, and pretrain -> fine-tune -> publish."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from lib.config import SSAST_MASK_RATIO, PretrainConfig
from lib.core.errors import ConfigError, ScanError
from lib.data.features import FeatureParams, build_feature_cache
from lib.data.unlabeled import scan_unlabeled
from lib.model.checkpoint import load_encoder
from lib.model.masked_patches import (
    MaskedPatchModel,
    cluster_masks,
    info_nce,
    maskable_patches,
    masked_counts,
    masked_positions,
    patch_values,
    random_masks,
    squared_error,
    summarise,
)
from lib.recipes.pretrain import (
    content_frames,
    epoch_table,
    plan_pretrain,
    pretrain_encoder,
    pretraining_split,
    publish_encoder,
)
from lib.train.epochs import EpochRecord
from lib.train.masked import masked_patch_metrics
from tests.helpers import StopAfterEpoch, plan_of, run_artifacts, run_logs, small_config

# 64 mel bins x 64 frames at stride 16: 4 x 4 patches of 16x16
TINY = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "num_mel_bins": 64
}


def tiny_pretrain_config(tmp_path: Path, data_dirs, validation_dir=None, **training) -> PretrainConfig:
    return PretrainConfig(
        name="tiny-ssl",
        output_dir=tmp_path / "out",
        data={"data_dirs": data_dirs, "validation_dir": validation_dir, "cache_dir": tmp_path / "cache"},
        features={"clip_seconds": 0.6, "max_frames": 64},  # 58 frames of audio in 64
        model=TINY,
        training={"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 0, "device": "cpu", **training},
    )


# --- masks ------------------------------------------------------------------------------------------------

def test_ssast_masks_400_of_512_patches_at_1024_frames_and_scales_with_the_frames():
    # 128 mel bins x 1024 frames at stride 16: 8 x 64 = 512 patches, of which SSAST masks 400
    full = maskable_patches(torch.tensor([1024]), (8, 64), 16)
    assert int(masked_counts(full, SSAST_MASK_RATIO)) == 400
    # 128 frames (the default max_frames): 8 x 8 = 64 patches -> round(0.78125 * 64) = 50
    assert int(masked_counts(maskable_patches(torch.tensor([128]), (8, 8), 16), SSAST_MASK_RATIO)) == 50


@pytest.mark.parametrize("masking", ["random", "cluster"])
def test_masks_have_the_count_and_never_cover_a_patch_wholly_in_padding(masking):
    frames = torch.tensor([128, 98, 40, 16, 1, 0])  # 128 frames of which so many hold audio
    grid = (4, 8)
    maskable = maskable_patches(frames, grid, 16)
    # time column t starts at frame 16 t: it holds audio when 16 t < frames
    columns_with_audio = [8, 7, 3, 1, 1, 0]
    assert maskable.reshape(6, 4, 8).any(dim=1).sum(dim=1).tolist() == columns_with_audio
    counts = masked_counts(maskable, SSAST_MASK_RATIO)
    assert counts.tolist() == [25, 22, 9, 3, 3, 0]  # round(0.78125 x 4 x columns), at least 1 when any
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        mask = (random_masks if masking == "random" else lambda m, c, g: cluster_masks(m, c, grid, g))(
            maskable, counts, generator
        )
        assert mask.sum(dim=1).tolist() == counts.tolist()
        assert not (mask & ~maskable).any()
        by_column = mask.reshape(6, 4, 8).any(dim=1)
        for clip, audio in enumerate(columns_with_audio):
            assert not by_column[clip, audio:].any()  # no patch of a padding column


def test_cluster_masking_masks_squares_of_neighbours():
    grid = (8, 64)
    maskable = maskable_patches(torch.tensor([1024] * 8), grid, 16)
    counts = masked_counts(maskable, 0.1)  # 51 patches a clip

    def with_masked_neighbour(mask):
        grid_mask = mask.reshape(-1, *grid)
        padded = torch.nn.functional.pad(grid_mask.float(), (1, 1, 1, 1))
        neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
        return float(((neighbours > 0) & grid_mask).sum() / grid_mask.sum())

    generator = torch.Generator().manual_seed(0)
    clustered = cluster_masks(maskable, counts, grid, generator)
    scattered = random_masks(maskable, counts, generator)
    assert clustered.sum(dim=1).tolist() == scattered.sum(dim=1).tolist() == [51] * 8
    assert with_masked_neighbour(clustered) > 0.95 > 0.5 > with_masked_neighbour(scattered)


def test_masked_positions_list_each_clips_masked_patches_in_order():
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    index, valid = masked_positions(mask)
    assert valid.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert index[0].tolist() == [1, 3, 4] and index[1, 0] == 0


def test_patch_values_follow_the_encoders_token_order():
    config = small_config(frequency_stride=16, time_stride=16)
    values = torch.randn(2, 64, 64)  # (clips, frames, mel bins)
    patches = patch_values(values, 16)
    assert patches.shape == (2, 16, 256)
    # token f * 4 + t is mel bins [16 f, 16 f + 16) x frames [16 t, 16 t + 16), flattened bin-major
    assert torch.equal(patches[1, 2 * 4 + 3], values[1, 48:64, 32:48].T.reshape(-1))
    # ... which is the order of the conv that embeds the patches (a conv picking one value checks it)
    model = MaskedPatchModel(config)
    projection = model.encoder.embeddings.patch_embeddings.projection
    with torch.no_grad():
        projection.weight.zero_()
        projection.bias.zero_()
        projection.weight[0, 0, 5, 7] = 1.0  # mel bin 5, frame 7 of each patch
    tokens = model.encoder.embeddings.patch_embeddings(values)
    assert torch.allclose(tokens[..., 0], patches[..., 5 * 16 + 7])


# --- losses -----------------------------------------------------------------------------------------------

def test_info_nce_is_zero_and_accuracy_one_for_perfect_predictions_and_counts_only_valid_patches():
    targets = 10 * torch.eye(4, 256)[None].repeat(2, 1, 1)  # 4 orthogonal patches, each with norm 10
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    nll, scored, correct = info_nce(targets, targets, valid)
    # clip 0: 3 masked patches, each picks its own (scores 100 vs 0): -log(1 / (1 + 2 e^-100)) ~ 0
    assert scored.tolist() == [3, 0] and correct.tolist() == [3, 0]  # clip 1 has nothing to tell apart
    assert float(nll[0]) == pytest.approx(3 * math.log1p(2 * math.exp(-100)), abs=1e-6)
    # predictions that point at the next patch: every pick wrong, -log p(own) = 100 + log(1 + 2 e^-100)
    shifted = targets[:, [1, 2, 0, 3]]
    nll, scored, correct = info_nce(shifted, targets, valid)
    assert correct.tolist() == [0, 0] and float(nll[0]) == pytest.approx(3 * 100.0, rel=1e-6)
    # uninformative predictions: -log(1/3) each
    nll, _, _ = info_nce(torch.zeros_like(targets), targets, valid)
    assert float(nll[0]) == pytest.approx(3 * math.log(3), rel=1e-6)


def test_mse_is_the_mean_square_over_masked_patches_only():
    targets = torch.randn(2, 3, 256)
    predictions = targets + 0.5
    predictions[1, 2] += 100.0  # a padding slot: never counted
    valid = torch.tensor([[True, True, True], [True, True, False]])
    error_sum, patches = squared_error(predictions, targets, valid)
    assert patches.tolist() == [3, 2] and error_sum.tolist() == pytest.approx([0.75, 0.5])
    stats = torch.tensor([6.0, 3, 2, float(error_sum.sum()), 5])
    assert summarise(stats, 10.0) == pytest.approx({"nce": 2.0, "mse": 0.25, "total": 2.0 + 2.5, "accuracy": 2 / 3})


def test_the_model_runs_the_ast_encoder_and_masks_only_what_it_is_told():
    torch.manual_seed(0)
    model = MaskedPatchModel(small_config(frequency_stride=16, time_stride=16)).eval()
    values = torch.randn(3, 64, 64)
    # unmasked, its encoder pass is ASTModel.forward
    tokens = model.encoder.embeddings.patch_embeddings(values)
    assert torch.allclose(model.encode(tokens), model.encoder(values).last_hidden_state, atol=1e-6)
    # the loss is InfoNCE + 10 x MSE, pooled over the masked patches
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, [1, 5, 9]] = mask[1, [0, 2]] = mask[2, [3]] = True
    output = model(values, mask=mask)
    stats = output.clip_stats
    assert stats[:, 1].tolist() == [3, 2, 0] and stats[:, 4].tolist() == [3, 2, 1]
    pooled = summarise(stats.sum(dim=0), 10.0)
    assert float(output.loss.detach()) == pytest.approx(pooled["total"], rel=1e-5)
    # evaluation masks restart from the same seed: each clip masked alike every time
    frames = torch.tensor([64, 30, 17])  # 17 frames: columns 0 and 1 (it starts at frame 16) hold audio
    model.reset_eval_masks()
    first = model.sample_masks(frames)
    model.reset_eval_masks()
    assert torch.equal(first, model.sample_masks(frames)) and first.sum(dim=1).tolist() == [12, 6, 6]


# --- data ---------------------------------------------------------------------------------------------------

def test_content_frames_end_where_the_features_padding_starts(tmp_path):
    rng = np.random.default_rng(0)
    clips = {"short.wav": (16000, 0.35), "resampled/short.wav": (22050, 0.5), "long.wav": (16000, 1.4)}
    for name, (rate, seconds) in clips.items():
        (tmp_path / "clips" / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "clips" / name, 0.3 * rng.standard_normal(int(rate * seconds)), rate, subtype="PCM_16")
    (tmp_path / "validation").mkdir()
    sf.write(tmp_path / "validation" / "v.wav", 0.3 * rng.standard_normal(16000), 16000, subtype="PCM_16")
    manifest = scan_unlabeled([tmp_path / "clips"], tmp_path / "validation")
    params = FeatureParams(num_mel_bins=64, max_frames=128)  # 1 s clips: 98 fbank frames, then 30 padded
    ref, _ = build_feature_cache(manifest, params, tmp_path / "cache")
    dataset = pretraining_split(ref, manifest, "train")
    assert len(dataset) == 3
    seen = {}
    for row, path in zip(dataset, dataset.data.column("path").to_pylist(), strict=True):
        values, audio = row["input_values"].numpy(), int(row["content_frames"])
        seen[Path(path).relative_to(tmp_path / "clips").as_posix()] = audio
        silent = values[audio:98]  # zero samples: every mel bin at log(eps), the same in every frame
        assert np.ptp(silent) == 0 if len(silent) else True
        assert np.ptp(values[audio - 1]) > 0  # the last frame with audio in it
        assert np.allclose(values[98:], (0 - params.mean) / (2 * params.std))  # the extractor's padding
    # 0.35 s: 5600 samples, a frame every 160 -> 35 frames start in audio; 0.5 s at 22050 Hz -> 8000 at 16 kHz -> 50
    assert seen == {"short.wav": 35, "resampled/short.wav": 50, "long.wav": 98}
    assert content_frames(manifest.validation[0], params) == 98


def write_clips(folder: Path, count: int, rate: int = 16000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        sf.write(folder / f"c{index:03d}.wav", np.zeros(rate // 4, np.float32), rate, subtype="PCM_16")


def test_unlabeled_scan_lists_any_depth_holds_out_by_path_and_names_bad_files(tmp_path):
    write_clips(tmp_path / "a", 3)
    write_clips(tmp_path / "a" / "deep" / "er", 30)
    write_clips(tmp_path / "b" / "class_x", 7)
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    manifest = scan_unlabeled([tmp_path / "a", tmp_path / "b"], holdout_fraction=0.25)
    assert len(manifest.train) + len(manifest.validation) == 40 and manifest.label_names == ["unlabeled"]
    assert 4 <= len(manifest.validation) <= 16 and manifest.ignored == {"non_audio": 1}
    # the held-out share is a function of each path: the same on a re-scan, and a clip keeps its side
    write_clips(tmp_path / "b" / "class_y", 5)
    again = scan_unlabeled([tmp_path / "a", tmp_path / "b"], holdout_fraction=0.25)
    assert {c.path for c in manifest.validation} <= {c.path for c in again.validation}
    assert again.fingerprint != manifest.fingerprint
    # a validation folder replaces the hold-out
    write_clips(tmp_path / "v", 2)
    with_validation = scan_unlabeled([tmp_path / "a"], tmp_path / "v")
    assert (len(with_validation.train), len(with_validation.validation)) == (33, 2)
    # overlapping folders would list clips twice
    with pytest.raises(ScanError, match=r"--data-dir 2 .* overlap"):
        scan_unlabeled([tmp_path / "a", tmp_path / "a" / "deep"])
    # bad files: named, or skipped and counted
    (tmp_path / "a" / "deep" / "broken.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(
        ScanError, match=r"(?s)1 bad audio file.*broken\.wav: not a readable audio file.*--skip-bad-files"
    ):
        scan_unlabeled([tmp_path / "a"])
    skipped = scan_unlabeled([tmp_path / "a"], skip_bad_files=True)
    assert [Path(item.path).name for item in skipped.skipped] == ["broken.wav"]
    assert len(skipped.train) + len(skipped.validation) == 33
    with pytest.raises(ScanError, match=r"--data-dir 1 .*missing: no such folder; pass a folder of .wav clips"):
        scan_unlabeled([tmp_path / "missing"])


def test_plan_names_the_parameter_and_the_fix(tmp_path, dataset_dirs):
    train_dir, validation_dir = dataset_dirs
    config = tiny_pretrain_config(tmp_path, [train_dir], validation_dir)
    plan = plan_pretrain(config)
    assert (plan.grid, plan.masked_per_clip) == ((4, 4), 12)
    assert plan.encoder["frequency_stride"] == plan.encoder["time_stride"] == 16 and plan.encoder["max_length"] == 64
    assert plan.work_dir == tmp_path / "out" / "ssl-runs" / "tiny-ssl"
    with pytest.raises(ConfigError, match=r"num_attention_heads=3 does not divide model.hidden_size=32"):
        plan_pretrain(config.model_copy(update={"model": config.model.model_copy(update={"num_attention_heads": 3})}))
    with pytest.raises(ConfigError, match=r"clip_seconds=1.0 makes 98 frames but features.max_frames is 64"):
        plan_pretrain(config.model_copy(update={"features": config.features.model_copy(update={"clip_seconds": 1.0})}))
    with pytest.raises(ConfigError, match=r"--data-dir 2 \(data.data_dirs\[1\]\) .*nowhere: no such folder"):
        data = config.data.model_copy(update={"data_dirs": [train_dir, tmp_path / "nowhere"]})
        plan_pretrain(config.model_copy(update={"data": data}))
    with pytest.raises(ConfigError, match=r"work_dir \(--work-dir\) .* is inside --data-dir 1"):
        plan_pretrain(config.model_copy(update={"work_dir": train_dir / "runs"}))


def with_sections(config: PretrainConfig, **sections) -> PretrainConfig:
    """The config with some fields of its sections replaced: with_sections(c, objective={"mask_ratio": 0.5})."""
    return config.model_copy(update={
        name: getattr(config, name).model_copy(update=fields) for name, fields in sections.items()
    })


def plan_refusal(config: PretrainConfig) -> str:
    """The message plan_pretrain refuses the config with."""
    with pytest.raises(ConfigError) as refused:
        plan_pretrain(config)
    return str(refused.value)


def test_plan_refuses_a_mask_ratio_that_scores_no_clip_or_leaves_nothing_visible(tmp_path, dataset_dirs):
    config = tiny_pretrain_config(tmp_path, [dataset_dirs[0]], dataset_dirs[1])  # 0.6 s clips fill all 4 x 4 patches
    grid = ("a 0.6 s clip (features.clip_seconds), which fills 16 of the patch grid's 4 x 4 patches of 16x16 "
            "(model.num_mel_bins=64 mel bins x features.max_frames=64 frames)")
    # 0.05 x 16 = 0.8: one masked patch, which InfoNCE cannot tell from anything (the run would report nce 0)
    assert plan_refusal(with_sections(config, objective={"mask_ratio": 0.05})) == (
        f"objective.mask_ratio (--mask-ratio) 0.05 masks 1 patch of {grid}; InfoNCE picks each masked patch out "
        "among the clip's other masked patches, so with fewer than 2 no clip is scored and the discriminative head "
        "never trains. Raise --mask-ratio to at least 0.125"
    )
    assert plan_pretrain(with_sections(config, objective={"mask_ratio": 0.125})).config.objective.mask_ratio == 0.125
    # 0.97 x 16 = 15.5: all 16 masked, nothing left to predict them from
    assert plan_refusal(with_sections(config, objective={"mask_ratio": 0.97})) == (
        f"objective.mask_ratio (--mask-ratio) 0.97 masks all 16 patches of {grid}, leaving none visible to predict "
        "them from; lower --mask-ratio to at most 0.9375"
    )
    assert plan_pretrain(with_sections(config, objective={"mask_ratio": 0.9375})).config.objective.mask_ratio == 0.9375
    # the report's case: --mask-ratio 0.01 at the default 1 s clips, 128 frames and 128 mel bins (56 patches hold audio)
    defaults = with_sections(config, features={"clip_seconds": 1.0, "max_frames": 128}, model={"num_mel_bins": 128})
    with pytest.raises(ConfigError, match=r"^objective.mask_ratio \(--mask-ratio\) 0.01 masks 1 patch of a 1 s clip "
                                          r"\(features.clip_seconds\), which fills 56 of the patch grid's 8 x 8 patches"
                                          r".* Raise --mask-ratio to at least 0.0358$"):
        plan_pretrain(with_sections(defaults, objective={"mask_ratio": 0.01}))
    # a 1 x 1 grid: no ratio works
    one_patch = with_sections(config, features={"clip_seconds": 0.16, "max_frames": 16}, model={"num_mel_bins": 16})
    assert plan_refusal(one_patch) == (
        "the patch grid is too small for masked patch modelling: a 0.16 s clip (features.clip_seconds), which fills "
        "1 of the patch grid's 1 x 1 patches of 16x16 (model.num_mel_bins=16 mel bins x features.max_frames=16 "
        "frames); at least 3 patches must hold audio (2 masked, InfoNCE picks each among the others, and 1 left "
        "visible). Raise features.clip_seconds and features.max_frames (--max-frames), or model.num_mel_bins"
    )


def test_figures_no_masked_patch_was_scored_for_are_not_measured_rather_than_zero(capsys):
    # clips with one masked patch each: InfoNCE scores none of them, MSE all
    torch.manual_seed(0)
    model = MaskedPatchModel(small_config(frequency_stride=16, time_stride=16)).eval()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 3] = mask[1, 7] = True
    stats = model(torch.randn(2, 64, 64), mask=mask).clip_stats
    assert stats[:, 1].tolist() == [0, 0] and stats[:, 4].tolist() == [1, 1]
    figures = summarise(stats.sum(dim=0), 10.0)
    assert figures["nce"] is figures["total"] is figures["accuracy"] is None
    assert figures["mse"] == pytest.approx(float(stats[:, 3].sum()) / 2)
    assert summarise(torch.zeros(5), 10.0) == {"nce": None, "mse": None, "total": None, "accuracy": None}
    # ... as evaluation reports them
    from transformers import EvalPrediction

    metrics = masked_patch_metrics(10.0)(EvalPrediction(predictions=stats.numpy(), label_ids=np.zeros(2)))
    assert metrics["accuracy"] is None and metrics["masked_patches"] == 0.0
    # the train log line, pretrain.json's epochs (valid JSON: no NaN) and the command line's summary say so
    record = EpochRecord(epoch=1, epochs=1, batch_size=2, step=1, train_loss=0.5, seconds=1.0,
                         train_metrics={"nce": 2.0, "accuracy": 0.25}, metrics={"nce": None, "accuracy": None})
    assert record.line() == ("epoch 1/1  batch_size 2  step 1  train_loss 0.5000  train_nce 2.0000  "
                             "train_accuracy 0.2500  nce n/a  accuracy n/a  seconds 1.0")
    table = json.loads(json.dumps(epoch_table([record]), allow_nan=False))
    assert table[0]["validation"] == {"nce": None, "accuracy": None}
    from tasks.member import _rounded  # the Prefect UI's epochs table

    assert (_rounded(None), _rounded(0.123456)) == (None, 0.1235)
    from flows.cli import print_pretrain_summary

    print_pretrain_summary({"published": "out/ssl/x", "epochs": 1, "train": {"nce": 2.0, "accuracy": 0.25},
                            "validation": {"nce": None, "accuracy": None}})
    lines = capsys.readouterr().out.splitlines()
    assert lines[4:8] == ["         nce:     2.0000         n/a", "         mse:        n/a         n/a",
                          "       total:        n/a         n/a", "    accuracy:     0.2500         n/a"]


def test_folder_mistakes_are_refused_by_the_plan_in_one_line_before_any_flow_runs(tmp_path, monkeypatch, capsys):
    import flows.pretrain
    from flows.cli import main

    monkeypatch.setattr(flows.pretrain, "pretrain", lambda config: pytest.fail("the flow must not start"))
    unl = tmp_path / "data" / "unl"
    write_clips(unl / "sub", 2)
    (tmp_path / "notes.txt").write_text("x")
    base = ["pretrain", "--name", "s", "--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    cases = {
        # the report's cases: one folder twice, a validation folder inside a data folder
        (f"{unl},{unl}", None): (
            f"--data-dir 1 (data.data_dirs[0]) {unl} and --data-dir 2 (data.data_dirs[1]) {unl} are the same folder "
            f"({unl}): its clips would be listed twice, or held out and trained on at once; pass each folder once, "
            "and a --validation-dir apart from the --data-dir folders"
        ),
        (str(unl), unl / "sub"): (
            f"--data-dir 1 (data.data_dirs[0]) {unl} and --validation-dir (data.validation_dir) {unl / 'sub'} overlap "
            f"({unl / 'sub'} lies in {unl}): its clips would be listed twice, or held out and trained on at once; "
            "pass folders apart from each other"
        ),
        (str(tmp_path / "notes.txt"), None): (
            f"--data-dir 1 (data.data_dirs[0]) {tmp_path / 'notes.txt'} is a file, not a folder; pass a folder of "
            ".wav clips (searched at any depth)"
        ),
        (str(unl), tmp_path / "missing"): (
            f"--validation-dir (data.validation_dir) {tmp_path / 'missing'}: no such folder; pass a folder of .wav "
            "clips (searched at any depth)"
        ),
    }
    for (data_dirs, validation), message in cases.items():
        code = main([*base, "--data-dir", data_dirs, *(["--validation-dir", str(validation)] if validation else [])])
        assert (code, capsys.readouterr().err) == (2, f"astft: {message}\n")


def test_the_scan_cache_key_never_raises_so_the_scan_task_reports_its_own_error(tmp_path):
    from lib.config import PretrainDataConfig
    from tasks.pretrain import unlabeled_scan_cache_key

    write_clips(tmp_path / "a", 2)

    def key(data_dirs, validation_dir=None):
        data = PretrainDataConfig(data_dirs=data_dirs, validation_dir=validation_dir)
        return unlabeled_scan_cache_key(None, {"plan": plan_of(data)})

    assert key([tmp_path / "a"]).startswith("astft-scan-unlabeled-")
    # no key (the task runs uncached and raises the scan's error), where Prefect used to log a traceback
    assert key([tmp_path / "a", tmp_path / "a"]) is None
    assert key([tmp_path / "a"], tmp_path / "missing") is None


def test_an_empty_folder_says_what_was_ignored_in_it_and_a_link_into_validation_is_named_once(tmp_path, caplog):
    from lib.config import PretrainDataConfig
    from tasks.pretrain import unlabeled_scan_cache_key

    (tmp_path / "m4as" / ".cache").mkdir(parents=True)
    for name in ("a.m4a", "b.aac", ".DS_Store"):
        (tmp_path / "m4as" / name).write_text("x")
    with pytest.raises(ScanError) as refused:
        scan_unlabeled([tmp_path / "m4as"])
    assert str(refused.value) == (
        f"--data-dir 1 (data.data_dirs[0]) {tmp_path / 'm4as'} holds no audio clips (searched at any depth); "
        "ignored there: 2 hidden entries; 2 files that are not .wav, .flac, .ogg or .mp3 (convert them)"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError) as refused:
        scan_unlabeled([tmp_path / "empty"])
    assert str(refused.value) == (
        f"--data-dir 1 (data.data_dirs[0]) {tmp_path / 'empty'} holds no audio clips (searched at any depth)"
    )
    # a link in a data folder into the validation folder: not followed, and named once per scan (the cache key
    # lists the folders too, quietly)
    write_clips(tmp_path / "unl", 3)
    write_clips(tmp_path / "val", 2)
    (tmp_path / "unl" / "also").symlink_to(tmp_path / "val")
    data = PretrainDataConfig(data_dirs=[tmp_path / "unl"], validation_dir=tmp_path / "val")
    caplog.clear()
    assert unlabeled_scan_cache_key(None, {"plan": plan_of(data)}) is not None
    manifest = scan_unlabeled([tmp_path / "unl"], tmp_path / "val")
    assert (len(manifest.train), len(manifest.validation)) == (3, 2)
    assert manifest.ignored == {"folder_link_into_the_dataset": 1}
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        f"not following {tmp_path / 'unl' / 'also'}: it links to {tmp_path / 'val'}, inside another pretraining "
        "folder (a --data-dir or the --validation-dir), whose clips would be listed twice, or validated on and "
        "trained on at once; remove the link"
    ]


def test_the_plan_names_what_pretraining_writes_and_refuses_a_folder_astft_did_not_publish(tmp_path, dataset_dirs):
    train_dir, validation_dir = dataset_dirs
    config = tiny_pretrain_config(tmp_path, [train_dir], validation_dir)
    assert plan_refusal(config.model_copy(update={"output_dir": train_dir / "out"})) == (
        f"output_dir (--output-dir) {train_dir / 'out'} is inside --data-dir 1 (data.data_dirs[0]) {train_dir}: the "
        "next scan would read the folders written there (ssl/, ssl-runs/, features/) as part of the data; choose a "
        "folder outside the data folders"
    )
    foreign = tmp_path / "out" / "ssl" / "tiny-ssl"
    foreign.mkdir(parents=True)
    (foreign / "pretrain.json").write_text("{}")  # even a copy of an encoder: it is someone's folder, not a link
    assert plan_refusal(config) == (
        f"{foreign} is a plain folder, not an encoder astft published (astft publishes an encoder as a link to a "
        "hidden version folder .tiny-ssl.v-* beside it, which holds pretrain.json): publishing encoder tiny-ssl "
        "would replace it. Move it away, or choose another name (--name) or --output-dir"
    )


def test_a_fine_tune_work_dir_is_refused_to_pretraining_before_any_work(tmp_path, dataset_dirs):
    from lib.train.workdir import RunOwner, prepare_work_dir

    fine_tune = tmp_path / "out" / "runs" / "ft-mine"
    prepare_work_dir(fine_tune, "fp", RunOwner(kind="finetune", name="ft-mine"))
    (fine_tune / "checkpoint-6").mkdir()
    (fine_tune / "checkpoint-6" / "trainer_state.json").write_text("{}")
    config = tiny_pretrain_config(tmp_path, [dataset_dirs[0]], dataset_dirs[1])
    config = config.model_copy(update={"work_dir": fine_tune})
    assert plan_refusal(config) == (
        f"work_dir (--work-dir) {fine_tune} belongs to another run: its run.json says the fine-tune run (astft "
        "finetune / ensemble) 'ft-mine' made it, not this pretraining run (astft pretrain) 'tiny-ssl', which would "
        "remove that run's checkpoints and logs. Pick another --work-dir (or leave it unset: each run gets its own "
        f"folder under --output-dir), or remove {fine_tune} yourself if that run's checkpoints are not needed"
    )
    assert (fine_tune / "checkpoint-6" / "trainer_state.json").is_file()


def test_predict_says_a_pretrained_encoder_is_one_and_how_to_fine_tune_from_it(tmp_path):
    from lib.core.errors import EnsembleError
    from lib.evaluate.members import resolve_members
    from tests.factories import make_ssl_checkpoint

    encoder, _ = make_ssl_checkpoint(tmp_path / "out" / "ssl" / "mine", small_config())
    (encoder / "pretrain.json").write_text("{}")
    with pytest.raises(EnsembleError) as refused:
        resolve_members(encoder)
    assert str(refused.value) == (
        f"{encoder} is not a published member (needs config.json and member.json); pass a folder that astft "
        f"finetune/ensemble published under <output_dir>/best/. {encoder} is a pretrained encoder (astft pretrain), "
        f"which classifies nothing; fine-tune a classifier from it with astft finetune --ssl-checkpoint {encoder} ..."
    )
    with pytest.raises(EnsembleError) as refused:
        resolve_members(encoder.parent)
    assert str(refused.value) == (
        f"--model (model_path) {encoder.parent}: neither a member folder nor a folder of members; pass "
        "<output_dir>/best/ for the ensemble or <output_dir>/best/<name>/ for one member. It holds pretrained "
        "encoders (mine; astft pretrain), which classify nothing: fine-tune a classifier from one with astft "
        f"finetune --ssl-checkpoint {encoder} ..."
    )


# --- the checkpoint ---------------------------------------------------------------------------------------

def test_the_checkpoint_layout_loads_as_an_ssl_checkpoint_with_the_same_encoder_weights(tmp_path):
    torch.manual_seed(0)
    model = MaskedPatchModel(small_config(frequency_stride=16, time_stride=16))
    model.save_pretrained(tmp_path / "ssl")  # as Trainer's checkpoints and the published folder are written
    state = load_file(str(tmp_path / "ssl" / "model.safetensors"))
    assert {key.split(".")[0] for key in state} == {"encoder", "projector", "decoder", "mask_embedding"}
    assert "encoder.layers.1.attention.q_proj.weight" in state  # transformers 5 names
    assert state["projector.2.weight"].shape == state["decoder.2.weight"].shape == (256, 32)
    config = json.loads((tmp_path / "ssl" / "config.json").read_text())
    assert config["model_type"] == "audio-spectrogram-transformer"
    assert (config["frequency_stride"], config["time_stride"]) == (16, 16)
    encoder, report = load_encoder(tmp_path / "ssl")
    assert report.prefix == "encoder." and report.dropped == {"projector": 4, "decoder": 4, "mask_embedding": 1}
    assert report.position_grid.checkpoint == (4, 4) and report.position_grid.adaptation == "none"
    expected = model.encoder.state_dict()
    assert encoder.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in encoder.state_dict().items())


# --- training -----------------------------------------------------------------------------------------------

@pytest.mark.train
def test_a_run_killed_after_epoch_one_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, dataset_dirs):
    train_dir, validation_dir = dataset_dirs
    manifest = scan_unlabeled([train_dir], validation_dir)

    def run(work: str, *callbacks):
        config = tiny_pretrain_config(tmp_path, [train_dir], validation_dir)
        config = config.model_copy(update={"work_dir": tmp_path / work})
        plan = plan_pretrain(config)
        features, _ = build_feature_cache(manifest, plan.feature_params, tmp_path / "cache")
        return plan, features, pretrain_encoder(plan, manifest, features, extra_callbacks=callbacks)

    _, _, interrupted = run("resumed", StopAfterEpoch(1))
    assert [record.epoch for record in interrupted.epochs] == [1] and interrupted.resumed_from is None
    plan, features, resumed = run("resumed")
    assert resumed.resumed_from.endswith("checkpoint-6")  # 48 clips / 8 = 6 steps an epoch
    assert [record.epoch for record in resumed.epochs] == [1, 2] and resumed.optimizer_steps == 12
    _, _, clean = run("clean")
    final = [load_file(str(Path(outcome.model_dir) / "model.safetensors")) for outcome in (resumed, clean)]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][key], final[1][key]) for key in final[0])
    # the epochs' figures agree too (masks and data order are restored with the checkpoint)
    assert [r.metrics for r in resumed.epochs] == [r.metrics for r in clean.epochs]
    epoch = clean.epochs[1]
    assert set(epoch.train_metrics) == set(epoch.metrics) - {"loss", "masked_patches"}
    assert set(epoch.train_metrics) == {"nce", "mse", "total", "accuracy"}
    assert epoch.metrics["masked_patches"] == 18 * 12  # 18 validation clips, 12 of their 16 patches each
    assert epoch.metrics["total"] == pytest.approx(epoch.metrics["nce"] + 10 * epoch.metrics["mse"])
    # published: the SSL checkpoint, pretrain.json with both epochs, and nothing non-finite
    destination = publish_encoder(plan, features, resumed)
    assert destination == tmp_path / "out" / "ssl" / "tiny-ssl" and destination.is_symlink()
    record = json.loads((destination / "pretrain.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["final"] == resumed.epochs[1].metrics
    assert record["objective"]["patch_grid"] == [4, 4] and record["objective"]["masked_patches_of_a_full_clip"] == 12
    assert record["clips"] == {"train": 48, "validation": 18}
    # the speed settings as resolved on this CPU: the GPU-only ones off, the attention kernel the layers called
    assert record["training"]["speed"] == {"attention": "sdpa", "tf32": False, "optimizer": "adamw_torch_fused",
                                           "compile": False, "pin_memory": False, "dataloader_num_workers": 0}
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "train_logtiny-ssl.txt",
                 "pretraining_curves.png"):
        assert (destination / name).is_file(), name
    assert not (destination / "training_args.bin").exists()
    encoder, report = load_encoder(destination)
    assert all(torch.equal(tensor, final[0][f"encoder.{key}"]) for key, tensor in encoder.state_dict().items())


class KilledAfterSaving(Exception):
    """A run killed right after a checkpoint was written."""


class KillAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KilledAfterSaving(f"killed after checkpoint-{self.step}")


@pytest.mark.train
def test_an_epoch_resumed_mid_way_says_which_steps_its_training_figures_cover(tmp_path, dataset_dirs):
    train_dir, validation_dir = dataset_dirs
    manifest = scan_unlabeled([train_dir], validation_dir)
    config = tiny_pretrain_config(tmp_path, [train_dir], validation_dir, checkpoint_every_steps=4)
    plan = plan_pretrain(config)
    features, _ = build_feature_cache(manifest, plan.feature_params, tmp_path / "cache")
    with pytest.raises(KilledAfterSaving):  # 6 steps an epoch: killed 4 steps into epoch 1
        pretrain_encoder(plan, manifest, features, extra_callbacks=[KillAfterCheckpoint(4)])
    outcome = pretrain_encoder(plan, manifest, features)
    assert outcome.resumed_from.endswith("checkpoint-4")
    assert [(r.epoch, r.step, r.resumed_at_step) for r in outcome.epochs] == [(1, 6, 4), (2, 12, None)]
    table = epoch_table(outcome.epochs)
    assert [(e["train_steps"], e["resumed_mid_epoch"]) for e in table] == [([5, 6], True), ([7, 12], False)]
    log = Path(outcome.train_log).read_text()
    assert "# resumed mid-epoch 1 after step 4: that epoch's train figures cover only the steps after it\n" in log
    assert log.count("(resumed mid-epoch: train figures of steps 5-6 only)") == 1


@pytest.mark.train
def test_validation_clips_too_short_to_score_publish_not_measured_figures_as_null(tmp_path, dataset_dirs):
    # 0.25 s validation clips fill 2 of the 4 time columns: 8 patches, 0.15 x 8 = 1.2 -> one masked, never scored
    write_clips(tmp_path / "short", 6)
    train_dir = dataset_dirs[0]
    manifest = scan_unlabeled([train_dir], tmp_path / "short")
    config = tiny_pretrain_config(tmp_path, [train_dir], tmp_path / "short", epochs=1)
    plan = plan_pretrain(with_sections(config, objective={"mask_ratio": 0.15}))  # 2 of a 0.6 s clip's 16
    features, _ = build_feature_cache(manifest, plan.feature_params, tmp_path / "cache")
    outcome = pretrain_encoder(plan, manifest, features)
    validation = outcome.epochs[0].metrics
    assert (validation["nce"], validation["total"], validation["accuracy"], validation["masked_patches"]) == (
        None, None, None, 0.0)
    assert validation["mse"] > 0 and outcome.epochs[0].train_metrics["accuracy"] is not None
    destination = publish_encoder(plan, features, outcome)

    def no_nan(constant):
        raise AssertionError(f"pretrain.json holds {constant}")

    record = json.loads((destination / "pretrain.json").read_text(), parse_constant=no_nan)
    assert record["final"]["accuracy"] is None and record["epochs"][0]["validation"]["nce"] is None


# --- the flow: pretrain -> fine-tune -> publish -------------------------------------------------------------

@pytest.mark.slow
def test_pretrain_flow_publishes_an_encoder_that_finetune_loads_and_publishes_a_member(
    prefect_harness, tmp_path, dataset_dirs
):
    from flows.finetune import finetune
    from flows.pretrain import pretrain
    from lib.config import DataConfig, FinetuneConfig, ModelConfig, TrainingConfig

    train_dir, validation_dir = dataset_dirs
    state = pretrain(tiny_pretrain_config(tmp_path, [train_dir], validation_dir), return_state=True)
    summary = state.result()
    ssl = tmp_path / "out" / "ssl" / "tiny-ssl"
    assert summary["published"] == str(ssl) and summary["epochs"] == 2
    assert set(summary["validation"]) >= {"nce", "mse", "total", "accuracy"}
    # the UI: a line per epoch with train and validation figures, progress and an epochs table
    logs = run_logs(state.state_details.flow_run_id)
    epochs = [line for line in logs if line.startswith("encoder tiny-ssl: epoch ")]
    assert len(epochs) == 2 and all(" train_nce " in line and " accuracy " in line for line in epochs)
    artifacts = run_artifacts(state.state_details.flow_run_id)
    assert artifacts["progress-encoder-tiny-ssl"][1] == 100.0
    assert "train_accuracy" in json.loads(artifacts["epochs-encoder-tiny-ssl"][1])[1]

    # fine-tune from it, unchanged: --ssl-checkpoint <output_dir>/ssl/<name>
    member = finetune(FinetuneConfig(
        name="from-ssl",
        output_dir=tmp_path / "out",
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir, cache_dir=tmp_path / "cache"),
        features={"clip_seconds": 0.6, "max_frames": 64},
        model=ModelConfig(ssl_checkpoint=ssl),
        training=TrainingConfig(epochs=3, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3,
                                warmup_steps=0, device="cpu"),
    ))
    published = tmp_path / "out" / "best" / "from-ssl"
    assert member["published"] == str(published)
    info = json.loads((published / "member.json").read_text())
    assert info["encoder"]["dropped"] == {"projector": 4, "decoder": 4, "mask_embedding": 1}
    assert info["encoder"]["position_grid"] == {"checkpoint": [4, 4], "encoder": [4, 4], "max_frames": 64,
                                                "adaptation": "none"}
    # recorded by its published name, which outlives the version folder behind it, and by content
    assert info["encoder"]["checkpoint"] == str(ssl.resolve().parent.parent / "ssl" / "tiny-ssl")
    run_config = json.loads((published / "run_config.json").read_text())
    assert run_config["model"]["ssl_checkpoint"] == info["encoder"]["checkpoint"]
    assert len(info["encoder_cache_key"]) >= 16
    assert json.loads((published / "config.json").read_text())["time_stride"] == 16
    assert 0 <= member["metrics"]["accuracy"] <= 1
