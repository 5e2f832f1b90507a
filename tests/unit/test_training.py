import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ASTModel, TrainerCallback, TrainingArguments

from lib.config import TrainingConfig
from lib.core.errors import ConfigError
from lib.core.runtime import Runtime, resolve_runtime, seed_everything
from lib.data.features import load_split, make_feature_extractor
from lib.evaluate.evaluation import evaluate_model
from lib.model.checkpoint import load_encoder
from lib.model.classifier import apply_freezing, build_classifier
from lib.train.arguments import dataloader_workers, finetune_arguments
from lib.train.schedule import epoch_batch_sizes, optimizer_steps_per_epoch
from tests.helpers import CPU, random_features, small_config, train_classifier


def test_runtime_never_silently_ignores_mixed_precision():
    assert (CPU.device, CPU.precision) == ("cpu", "fp32")
    assert resolve_runtime("cpu", "bf16").precision == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_runtime("cpu", "fp16")



def test_device_cuda_without_a_visible_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_runtime("cuda", "auto")


def test_tf32_is_granted_only_on_a_cuda_gpu_that_has_it(monkeypatch):
    assert resolve_runtime("cpu", "auto", tf32=True).tf32 is False  # a wish, never an error on CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    for major, granted in ((7, False), (8, True), (9, True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda major=major: (major, 0))
        runtime = resolve_runtime("auto", "auto", tf32=True)
        assert (runtime.device, runtime.precision, runtime.tf32) == ("cuda", "bf16", granted)
    assert resolve_runtime("cuda", "fp32", tf32=False).tf32 is False


CUDA = Runtime("cuda", fp16=False, bf16=True, tf32=True)  # built by hand: the GPU defaults are checked on a CPU


def test_gpu_speed_defaults_are_on_for_cuda_and_off_for_cpu(tmp_path, monkeypatch):
    import lib.train.arguments

    monkeypatch.setattr(lib.train.arguments, "usable_cores", lambda: 16)
    config = TrainingConfig()
    cuda = finetune_arguments(config, tmp_path, CUDA)
    assert (cuda["bf16"], cuda["tf32"], cuda["torch_compile"]) == (True, True, False)
    assert cuda["optim"] == "adamw_torch_fused"
    assert (cuda["dataloader_pin_memory"], cuda["dataloader_num_workers"], cuda["dataloader_persistent_workers"]) == (
        True, 4, True)
    cpu = finetune_arguments(config, tmp_path, CPU)
    # tf32 None: TrainingArguments leaves the matmul mode alone (True raises where no GPU has TF32)
    assert (cpu["bf16"], cpu["tf32"], cpu["optim"], cpu["torch_compile"]) == (False, None, "adamw_torch_fused", False)
    assert (cpu["dataloader_pin_memory"], cpu["dataloader_num_workers"], cpu["dataloader_persistent_workers"]) == (
        False, 0, False)
    args = TrainingArguments(**finetune_arguments(config, tmp_path, CPU))  # what a CPU run really builds
    assert (args.optim, args.dataloader_pin_memory, args.dataloader_num_workers, args.torch_compile) == (
        "adamw_torch_fused", False, 0, False)
    # each setting can be turned: a GPU without TF32, the multi-tensor AdamW, compile, fixed workers
    changed = TrainingConfig(tf32=False, optimizer="adamw_torch", compile=True, pin_memory=False,
                             dataloader_num_workers=2, batch_sizes=[4, 8])
    cuda = finetune_arguments(changed, tmp_path, Runtime("cuda", fp16=True, bf16=False, tf32=False))
    assert (cuda["fp16"], cuda["tf32"], cuda["optim"], cuda["torch_compile"]) == (True, False, "adamw_torch", True)
    # a per-epoch schedule builds a loader every epoch: no persistent workers to leave behind
    assert (cuda["dataloader_pin_memory"], cuda["dataloader_num_workers"], cuda["dataloader_persistent_workers"]) == (
        False, 2, False)


@pytest.mark.parametrize(
    "cores, processes, workers", [(16, 1, 4), (4, 1, 3), (2, 1, 1), (1, 1, 0), (16, 4, 3), (8, 8, 0)]
)
def test_auto_dataloader_workers_leave_a_core_per_training_process(monkeypatch, cores, processes, workers):
    import lib.train.arguments

    monkeypatch.setattr(lib.train.arguments, "usable_cores", lambda: cores)
    assert dataloader_workers("auto", CUDA, processes) == workers
    assert dataloader_workers("auto", CPU, processes) == 0
    assert dataloader_workers(5, CPU, processes) == 5


@pytest.mark.slow
def test_tiny_ast_learns_separable_classes_and_the_best_epoch_is_what_gets_saved(features, ssl_checkpoint, tmp_path):
    seed_everything(0, True)
    encoder, _ = load_encoder(ssl_checkpoint)
    model = build_classifier(encoder, features.label_names)
    apply_freezing(model)
    config = TrainingConfig(
        epochs=12, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3, warmup_steps=0.1, seed=0
    )
    log = tmp_path / "train_logtiny.txt"
    outcome = train_classifier(
        model, load_split(features, "train"), load_split(features, "validation"),
        make_feature_extractor(features.params), config, tmp_path / "work", log, "fp-1", CPU,
    )
    assert outcome.epochs_run == 12
    assert outcome.best_metric >= 0.8  # 3 classes: chance is 0.33
    # the speed settings as they resolved on a CPU: the GPU ones off, the kernels named
    assert outcome.speed.model_dump() == {"attention": "sdpa", "tf32": False, "optimizer": "adamw_torch_fused",
                                          "compile": False, "pin_memory": False, "dataloader_num_workers": 0}

    result = evaluate_model(
        Path(outcome.best_model_dir), load_split(features, "validation"), features.label_names, 8, CPU,
        tmp_path / "eval",
    )
    # The reloaded best model reproduces the best epoch's score: the right weights were kept.
    assert result.metrics["accuracy"] == pytest.approx(outcome.best_metric)
    lines = [line for line in log.read_text().splitlines() if line.startswith("epoch ")]
    assert len(lines) == 12 and lines[0].startswith("epoch 1/12  batch_size 8")
    confusion = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert confusion["labels"] == list(features.label_names)
    assert np.sum(confusion["matrix"]) == features.num_clips["validation"]


@pytest.mark.slow
def test_a_run_with_the_same_config_resumes_and_another_config_starts_fresh(features, ssl_checkpoint, tmp_path):
    def run(epochs, fingerprint):
        seed_everything(0, True)
        encoder, _ = load_encoder(ssl_checkpoint)
        model = build_classifier(encoder, features.label_names)
        config = TrainingConfig(epochs=epochs, batch_size=16, gradient_accumulation_steps=1, learning_rate=1e-3)
        return train_classifier(
            model, load_split(features, "train"), load_split(features, "validation"),
            make_feature_extractor(features.params), config, tmp_path / "work", tmp_path / "log.txt", fingerprint, CPU,
        )

    first = run(2, "same")
    assert first.resumed_from is None
    again = run(3, "same")
    assert again.resumed_from is not None and again.resumed_from.endswith("checkpoint-6")
    assert again.epochs_run == 3
    fresh = run(1, "other")
    assert fresh.resumed_from is None
    assert sorted(p.name for p in (tmp_path / "work").glob("checkpoint-*")) == ["checkpoint-3"]


def test_a_checkpoint_interrupted_while_saving_is_not_resumed(tmp_path):
    from lib.train.workdir import prepare_work_dir

    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_text("x")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text('{"trunc')  # killed mid-write
    (tmp_path / "run.json").write_text('{"fingerprint": "fp", "kind": "finetune"}')
    assert prepare_work_dir(tmp_path, "fp") == str(tmp_path / "checkpoint-10")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10"]


def test_epoch_batch_sizes_repeat_the_last_entry_and_default_to_batch_size():
    assert epoch_batch_sizes(TrainingConfig(epochs=4, batch_sizes=[2, 4])) == [2, 4, 4, 4]
    assert epoch_batch_sizes(TrainingConfig(epochs=2, batch_sizes=[2, 4, 8])) == [2, 4]
    assert epoch_batch_sizes(TrainingConfig(epochs=3, batch_size=5)) == [5, 5, 5]
    # 20 examples, accumulation 2: 10 batches -> 5 steps, 5 -> 3, 3 (8+8+4) -> 2
    assert optimizer_steps_per_epoch(20, [2, 4, 8], 2) == [5, 3, 2]
    assert optimizer_steps_per_epoch(20, [8], 1, drop_last=True) == [2]


class ScheduleRecorder(TrainerCallback):
    """Per epoch: the batch sizes the model was called with in training, and samples per optimizer step."""

    def __init__(self, model):
        self.micro_batches: list[list[int]] = []
        self.step_samples: list[list[int]] = []
        self.learning_rates: list[float] = []  # after each optimizer step's scheduler update
        self.max_steps = None
        self._pending = 0
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        if module.training:
            size = kwargs["input_values"].shape[0]
            self.micro_batches[-1].append(size)
            self._pending += size

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.micro_batches.append([])
        self.step_samples.append([])

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self.step_samples[-1].append(self._pending)
        self._pending = 0
        self.learning_rates.append(lr_scheduler.get_last_lr()[0])
        self.max_steps = state.max_steps


def train_with_schedule(tmp_path, epochs: int, fingerprint: str = "schedule"):
    seed_everything(0, True)
    model = build_classifier(ASTModel(small_config()), ["a", "b", "c"])
    recorder = ScheduleRecorder(model)
    config = TrainingConfig(
        epochs=epochs, batch_sizes=[2, 4, 8], gradient_accumulation_steps=2, learning_rate=1e-3, warmup_steps=0
    )
    outcome = train_classifier(
        model, random_features(20, 0), random_features(6, 1), None, config,
        tmp_path / "work", tmp_path / "log.txt", fingerprint, CPU, extra_callbacks=[recorder],
    )
    return outcome, recorder


@pytest.mark.train
def test_batch_size_schedule_reaches_the_dataloader_and_the_lr_schedule_ends_at_the_last_step(tmp_path):
    outcome, recorder = train_with_schedule(tmp_path, epochs=4)

    # 20 examples; epochs use 2, 4, 8 and then 8 again (the last entry repeats)
    assert recorder.micro_batches == [[2] * 10, [4] * 5, [8, 8, 4], [8, 8, 4]]
    # accumulation 2: each optimizer step sees two batches, the last step of an epoch what is left
    assert recorder.step_samples == [[4] * 5, [8, 8, 4], [16, 4], [16, 4]]
    expected_steps = sum(optimizer_steps_per_epoch(20, [2, 4, 8, 8], 2))
    assert expected_steps == 12
    assert outcome.optimizer_steps == recorder.max_steps == expected_steps
    assert outcome.batch_sizes == [2, 4, 8, 8]
    # the cosine schedule spans exactly these steps: zero after the last one, not before
    assert recorder.learning_rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert recorder.learning_rates[-2] > 1e-6
    lines = [line for line in (tmp_path / "log.txt").read_text().splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[1] for line in lines] == ["batch_size 2", "batch_size 4", "batch_size 8", "batch_size 8"]


@pytest.mark.train
def test_resume_finds_its_epoch_in_a_batch_size_schedule(tmp_path):
    first, _ = train_with_schedule(tmp_path, epochs=2)
    assert first.optimizer_steps == 5 + 3
    # same run config, more epochs: resumes after epoch 2 (step 8), which a fixed epoch length
    # (5 steps) would have placed in the middle of epoch 2
    resumed, recorder = train_with_schedule(tmp_path, epochs=4)
    assert resumed.resumed_from.endswith("checkpoint-8")
    assert recorder.micro_batches == [[8, 8, 4], [8, 8, 4]]
    assert resumed.optimizer_steps == 12 and resumed.epochs_run == 4


@pytest.mark.train
def test_gradient_accumulation_averages_like_one_big_batch(tmp_path):
    """8 clips as one batch of 8, or as 2 accumulated batches of 4: the same step and logged loss."""

    def one_step(batch_size, accumulation):
        seed_everything(0, True)
        model = build_classifier(ASTModel(small_config()), ["a", "b", "c"])
        config = TrainingConfig(epochs=1, batch_size=batch_size, gradient_accumulation_steps=accumulation,
                                learning_rate=1e-3, warmup_steps=0, save_total_limit=1)
        work = tmp_path / f"b{batch_size}"
        train_classifier(model, random_features(8, 0), random_features(3, 1), None, config, work,
                         work / "log.txt", "fp", CPU)
        history = json.loads((work / "log_history.json").read_text())
        loss = next(entry["loss"] for entry in history if "loss" in entry)
        return loss, {k: v.clone() for k, v in model.state_dict().items()}

    loss_big, weights_big = one_step(8, 1)
    loss_accumulated, weights_accumulated = one_step(4, 2)
    assert loss_accumulated == pytest.approx(loss_big, rel=1e-4)
    for key, tensor in weights_big.items():
        torch.testing.assert_close(weights_accumulated[key], tensor, rtol=1e-4, atol=1e-6)


def test_starting_fresh_drops_the_previous_runs_logs(tmp_path):
    from lib.train.workdir import prepare_work_dir

    (tmp_path / "run.json").write_text('{"fingerprint": "old", "kind": "finetune"}')
    (tmp_path / "train_logm.txt").write_text("epoch 1/5 of the old config\n")
    (tmp_path / "log_history.json").write_text("[]")
    assert prepare_work_dir(tmp_path, "new") is None
    assert not (tmp_path / "train_logm.txt").exists() and not (tmp_path / "log_history.json").exists()


def test_resume_key_changes_with_the_data_and_the_encoder():
    from types import SimpleNamespace

    from lib.recipes.finetune import member_resume_key

    plan = SimpleNamespace(fingerprint="cfg")
    base = member_resume_key(plan, SimpleNamespace(key="features-a"), SimpleNamespace(path="/c/encoders/enc-1"))
    assert base == "cfg-features-a-enc-1"  # the layout run.json files of earlier runs hold
    assert base != member_resume_key(plan, SimpleNamespace(key="features-b"), SimpleNamespace(path="/c/encoders/enc-1"))
    assert base != member_resume_key(plan, SimpleNamespace(key="features-a"), SimpleNamespace(path="/c/encoders/enc-2"))


def test_the_schedule_checks_the_private_trainer_hooks_it_overrides(monkeypatch):
    from transformers import Trainer

    from lib.train.schedule import check_schedule_supported, schedule_hooks_problem

    assert schedule_hooks_problem() is None  # the pinned transformers: all hooks as expected

    class Renamed(Trainer):
        def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, **kwargs):
            pass

    assert "Trainer._run_epoch takes ('self', 'model', 'epoch', 'train_dataloader', 'steps_in_epoch', 'kwargs')" in (
        schedule_hooks_problem(Renamed)
    )

    class EightValues(Trainer):
        def set_initial_training_values(self, args, dataloader):
            """Returns:
            - `num_train_epochs`
            - `max_steps`
            """

    assert "returns ('num_train_epochs', 'max_steps')" in schedule_hooks_problem(EightValues)

    import lib.train.schedule

    monkeypatch.setattr(lib.train.schedule, "schedule_hooks_problem", lambda: "Trainer._run_epoch does not exist")
    with pytest.raises(
        ConfigError,
        match=r"training.batch_sizes needs the private Trainer hooks of transformers 5.24.0 .*does not exist",
    ):
        check_schedule_supported()


# --- work dir: a run deletes only what it can prove is its own -----------------------------------


def test_a_work_dir_astft_did_not_make_is_refused_and_left_alone(tmp_path):
    from lib.train.workdir import prepare_work_dir

    ssl_run = tmp_path / "ssl-run"  # e.g. the SSL run whose checkpoint-N is --ssl-checkpoint
    (ssl_run / "checkpoint-33297").mkdir(parents=True)
    (ssl_run / "checkpoint-33297" / "trainer_state.json").write_text("{}")
    (ssl_run / "checkpoint-33297" / "model.safetensors").write_text("SSL weights")
    (ssl_run / "train_logssl.txt").write_text("the SSL run's log\n")
    with pytest.raises(ConfigError, match=rf"work_dir \(--work-dir\) {ssl_run} is not empty and has no run.json"
                                          r".*Pick a new or empty folder for --work-dir, or remove .* yourself"):
        prepare_work_dir(ssl_run, "fp")
    assert (ssl_run / "checkpoint-33297" / "model.safetensors").read_text() == "SSL weights"
    assert (ssl_run / "train_logssl.txt").is_file()
    assert sorted(p.name for p in ssl_run.iterdir()) == ["checkpoint-33297", "train_logssl.txt"]  # nothing added

    notes = tmp_path / "notes"  # no checkpoints, but not ours either
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    with pytest.raises(ConfigError, match="has no run.json"):
        prepare_work_dir(notes, "fp")
    (tmp_path / "foreign-mark").mkdir()
    (tmp_path / "foreign-mark" / "run.json").write_text("[1, 2]")  # some other tool's run.json
    with pytest.raises(ConfigError, match="has no run.json"):
        prepare_work_dir(tmp_path / "foreign-mark", "fp")
    (tmp_path / "kindless").mkdir()
    (tmp_path / "kindless" / "run.json").write_text('{"fingerprint": "fp"}')  # no kind of run: not provably ours
    with pytest.raises(ConfigError, match="has no run.json"):
        prepare_work_dir(tmp_path / "kindless", "fp")
    assert (tmp_path / "kindless" / "run.json").read_text() == '{"fingerprint": "fp"}'


def test_a_new_or_empty_work_dir_is_marked_then_resumed_and_cleared_as_ours(tmp_path):
    from lib.train.workdir import claim_work_dir, prepare_work_dir

    work = tmp_path / "output" / "runs" / "m"  # the default <output_dir>/runs/<name>, made by the run
    claim_work_dir(work)
    (work / "parameter_counts.json").write_text("{}")  # a file the run wrote after claiming its work dir
    assert prepare_work_dir(work, "fp") is None
    assert json.loads((work / "run.json").read_text()) == {"fingerprint": "fp", "kind": "finetune"}
    checkpoint = work / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    assert prepare_work_dir(work, "fp") == str(checkpoint)  # resume
    claim_work_dir(work)  # a marked work dir is claimed again as it is
    assert prepare_work_dir(work, "fp") == str(checkpoint)
    assert prepare_work_dir(work, "other config") is None  # ours: cleared for the new config
    assert not checkpoint.exists()
    assert json.loads((work / "run.json").read_text()) == {"fingerprint": "other config", "kind": "finetune"}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_work_dir(empty, "fp") is None and (empty / "run.json").is_file()


def test_a_work_dir_is_refused_to_another_kind_of_run_or_name_and_resumed_or_cleared_for_its_own(tmp_path):
    from lib.train.workdir import RunOwner, prepare_work_dir

    work = tmp_path / "out" / "runs" / "ft-mine"
    mine = RunOwner(kind="finetune", name="ft-mine")
    assert prepare_work_dir(work, "fp", mine) is None
    assert json.loads((work / "run.json").read_text()) == {"fingerprint": "fp", "kind": "finetune", "name": "ft-mine"}
    checkpoint = work / "checkpoint-6"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    for other, this in (
        (RunOwner(kind="pretrain", name="ft-mine"), "pretraining run (astft pretrain) 'ft-mine'"),
        (RunOwner(kind="finetune", name="other"), "fine-tune run (astft finetune / ensemble) 'other'"),
    ):
        with pytest.raises(ConfigError) as refused:
            prepare_work_dir(work, "fp", other)
        assert str(refused.value) == (
            f"work_dir (--work-dir) {work} belongs to another run: its run.json says the fine-tune run (astft finetune "
            f"/ ensemble) 'ft-mine' made it, not this {this}, which would remove that run's checkpoints and logs. Pick "
            "another --work-dir (or leave it unset: each run gets its own folder under --output-dir), or remove "
            f"{work} yourself if that run's checkpoints are not needed"
        )
        assert checkpoint.is_dir()
    assert prepare_work_dir(work, "fp", mine) == str(checkpoint)  # same kind, name and config: resumed
    assert prepare_work_dir(work, "new config", mine) is None and not checkpoint.exists()  # same name: fresh


def test_a_resume_forgets_the_epochs_logged_after_its_checkpoint_which_it_trains_again(tmp_path):
    from lib.core.layout import EPOCHS_FILE
    from lib.train.epochs import EpochRecord, read_epoch_records
    from lib.train.workdir import prepare_work_dir

    # killed after epoch 2 was evaluated and logged, before its checkpoint was saved
    (tmp_path / "run.json").write_text('{"fingerprint": "fp", "kind": "finetune"}')
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    records = [EpochRecord(epoch=e, epochs=3, batch_size=8, step=5 * e, train_loss=1.0, metrics={}, seconds=1.0)
               for e in (1, 2)]
    (tmp_path / EPOCHS_FILE).write_text("".join(r.model_dump_json() + "\n" for r in records))
    assert prepare_work_dir(tmp_path, "fp") == str(tmp_path / "checkpoint-5")
    assert [record.epoch for record in read_epoch_records(tmp_path)] == [1]


@pytest.mark.parametrize("where", ["ssl_run", "in_checkpoint", "checkpoint", "train", "in_validation", "data_root"])
def test_plan_refuses_a_work_dir_that_holds_or_is_inside_the_checkpoint_or_the_data(
    dataset_dirs, ssl_checkpoint, tmp_path, where
):
    from lib.config import DataConfig, FinetuneConfig, ModelConfig
    from lib.recipes.finetune import plan_run

    train_dir, validation_dir = dataset_dirs
    work_dir, inside, field = {
        "ssl_run": (ssl_checkpoint.parent, ssl_checkpoint, "model.ssl_checkpoint"),
        "in_checkpoint": (ssl_checkpoint / "finetune", ssl_checkpoint, "model.ssl_checkpoint"),
        "checkpoint": (ssl_checkpoint, ssl_checkpoint, "model.ssl_checkpoint"),
        "train": (train_dir, train_dir, "data.train_dir"),
        "in_validation": (validation_dir / "runs", validation_dir, "data.validation_dir"),
        "data_root": (train_dir.parent, train_dir, "data.train_dir"),
    }[where]
    config = FinetuneConfig(
        name="m", output_dir=tmp_path, work_dir=work_dir,
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir),
        model=ModelConfig(ssl_checkpoint=ssl_checkpoint),
    )
    with pytest.raises(ConfigError, match=rf"work_dir \(--work-dir\) {work_dir} .*{field} .*\({inside}\)"):
        plan_run(config)
    assert not (work_dir / "run.json").exists()


def test_plan_refuses_a_non_empty_work_dir_it_did_not_make_before_any_work(dataset_dirs, ssl_checkpoint, tmp_path):
    from lib.config import DataConfig, FinetuneConfig, ModelConfig
    from lib.recipes.finetune import plan_run

    foreign = tmp_path / "somebody-elses"
    foreign.mkdir()
    (foreign / "checkpoint-1").mkdir()
    config = FinetuneConfig(
        name="m", output_dir=tmp_path, work_dir=foreign,
        data=DataConfig(train_dir=dataset_dirs[0], validation_dir=dataset_dirs[1]),
        model=ModelConfig(ssl_checkpoint=ssl_checkpoint),
    )
    with pytest.raises(ConfigError, match="has no run.json"):
        plan_run(config)
    assert plan_run(config.model_copy(update={"work_dir": None})).work_dir == tmp_path / "runs" / "m"  # default: fine
    # a pretraining run's work dir (its run.json says so) is not a fine-tune's either
    ssl_run = tmp_path / "ssl-runs" / "enc"
    ssl_run.mkdir(parents=True)
    (ssl_run / "run.json").write_text('{"fingerprint": "fp", "kind": "pretrain", "name": "enc"}')
    with pytest.raises(ConfigError, match=rf"work_dir \(--work-dir\) {ssl_run} belongs to another run: its run.json "
                                          r"says the pretraining run \(astft pretrain\) 'enc' made it, not this "
                                          r"fine-tune run \(astft finetune / ensemble\) 'm'"):
        plan_run(config.model_copy(update={"work_dir": ssl_run}))


@pytest.mark.parametrize("bars", [False, True])
def test_the_trainer_prints_no_log_dicts_and_at_most_one_bar(tmp_path, bars):
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from lib.train.engine import TrainingBar, quiet_trainer_console

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=not bars)
    trainer = Trainer(model=torch.nn.Linear(2, 2), args=args)
    quiet_trainer_console(trainer)
    kinds = {type(callback) for callback in trainer.callback_handler.callbacks}
    assert PrinterCallback not in kinds and ProgressCallback not in kinds  # they print {'loss': ...} dicts
    assert (TrainingBar in kinds) == bars  # --progress: the training steps' bar, no evaluation bar under it


def _rewrite_marker(work_dir, times):
    from lib.train.workdir import _write_marker

    for _ in range(times):
        _write_marker(work_dir, "same-config")


def test_torchrun_ranks_rewriting_the_run_marker_at_once_never_collide(tmp_path):
    import multiprocessing

    from lib.train.workdir import _marker

    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=_rewrite_marker, args=(tmp_path, 300)) for _ in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=60)

    assert [rank.exitcode for rank in ranks] == [0, 0]  # one rank's rename once found the other's file gone
    assert _marker(tmp_path)["fingerprint"] == "same-config"
    assert [entry.name for entry in tmp_path.iterdir()] == ["run.json"]
