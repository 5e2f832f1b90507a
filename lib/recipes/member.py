"""Train one member: in this process, or on several processes (GPUs) under torchrun.

`python -m lib.recipes.member SPEC.json` is what torchrun starts on every rank; HF Trainer picks up the
distributed environment torchrun sets (one process per GPU, DistributedSampler, gradients
all-reduced) and only rank 0 writes checkpoints, logs and the outcome file.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel
from transformers import ASTModel

from lib.model.checkpoint import EncoderRef
from lib.data.features import FeatureCacheRef, make_feature_extractor
from lib.model.classifier import apply_freezing, build_classifier
from lib.recipes.plan import RunPlan
from lib.core.runtime import apply_tf32, seed_everything
from lib.train.engine import TrainResult, train_classifier
from lib.train.epochs import EpochRecord, read_epoch_records
from lib.train.workdir import claim_work_dir, prepare_work_dir
from lib.model.trunk import TrunkCacheInfo, training_inputs
from lib.core.errors import TrainingOutOfMemory

logger = logging.getLogger(__name__)

EpochHook = Callable[[EpochRecord], None]
EPOCH_POLL_SECONDS = 2.0  # how often a torchrun launch looks for new epoch records


class TrainOutcome(TrainResult):
    """A member's training: the Trainer run, its trainable/total/frozen parameter counts, and the trunk cache."""

    parameters: dict[str, int]
    trunk_cache: TrunkCacheInfo


class MemberSpec(BaseModel):
    plan: RunPlan
    features: FeatureCacheRef
    encoder: EncoderRef
    outcome_file: str


def release_memory() -> None:
    """Drop what a failed member left behind (its traceback holds model and optimizer) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resume_key(plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef) -> str:
    """What must match for a work dir's checkpoints to be resumed: the config, the exact clips and
    features (the feature cache key covers the folder fingerprint) and the stripped encoder."""
    return f"{plan.fingerprint}-{features.key}-{Path(encoder.path).name}"


def train_member(
    plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef, on_epoch: EpochHook | None = None
) -> TrainOutcome:
    """Train one member on training.num_processes processes (torchrun), or in this one; log how it went.

    on_epoch(record) is called in this process after each epoch's validation, either way.
    """
    config = plan.config
    processes = config.training.num_processes
    if processes > 1:
        logger.info("training member %s on %d processes with torchrun", config.name, processes)
        outcome = train_member_distributed(plan, features, encoder, processes, on_epoch)
    else:
        outcome = train_member_in_process(plan, features, encoder, on_epoch)
    counts, trunk = outcome.parameters, outcome.trunk_cache
    logger.info(
        "variant %s: %d of %d parameters trained (%.1f%%), %s on %s; best %s=%s at epoch %s",
        config.model.freezing, counts["trainable"], counts["total"], 100 * counts["trainable"] / counts["total"],
        outcome.precision, outcome.device, outcome.metric, outcome.best_metric, outcome.best_epoch,
    )
    logger.info("trunk cache %s: %s", f"used (K={trunk.layers}, {trunk.dtype}, {trunk.path})" if trunk.used
                else "not used", trunk.reason)
    speed = outcome.speed
    logger.info(
        "speed settings: attention %s, tf32 %s, %s, compile %s, pin_memory %s, %d DataLoader workers",
        speed.attention, "on" if speed.tf32 else "off", speed.optimizer, "on" if speed.compile else "off",
        "on" if speed.pin_memory else "off", speed.dataloader_num_workers,
    )
    return outcome


def train_member_in_process(
    plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef, on_epoch: EpochHook | None = None
) -> TrainOutcome:
    """Build the classifier from the stripped encoder, freeze per variant, and fine-tune it."""
    config = plan.config
    seed_everything(config.training.seed, config.training.deterministic)
    model = build_classifier(
        ASTModel.from_pretrained(encoder.path),
        features.label_names,
        pooling=config.model.pooling,
        classifier_dropout=config.model.classifier_dropout,
        attention=config.training.attention,
    )
    counts = apply_freezing(model, config.model.head_only, config.model.train_last_n_layers)
    work_dir = plan.work_dir
    claim_work_dir(work_dir, plan.owner)  # before the trunk cache is built: a work dir we did not make is refused first
    apply_tf32(plan.runtime)  # the trunk cache is computed before Trainer would set it
    try:
        # frozen, deterministic leading layers: computed once and cached, only the tail trains (logged either way)
        inputs = training_inputs(model, config, features, plan.runtime)
        outcome = train_classifier(
            inputs.model,
            inputs.train,
            inputs.validation,
            make_feature_extractor(features.params),
            config.training,
            work_dir,
            work_dir / f"train_log{config.name}.txt",
            resume_key(plan, features, encoder) + inputs.fingerprint_suffix,
            plan.runtime,
            data_collator=inputs.data_collator,
            save_best=inputs.save_best,
            on_epoch=on_epoch,
            owner=plan.owner,
        )
        return TrainOutcome(**dict(outcome), parameters=counts, trunk_cache=inputs.trunk)
    except torch.cuda.OutOfMemoryError as error:
        raise TrainingOutOfMemory(
            f"GPU out of memory training member {config.name} (per-device batch size "
            f"{config.training.batch_sizes or config.training.batch_size}, "
            f"{features.params.max_frames} frames, variant {config.model.freezing}, {plan.runtime.precision}). "
            "Lower training.batch_size (--batch-size) and raise gradient_accumulation_steps to keep the "
            "effective batch; or start a per-epoch batch-size schedule small; or cut features.max_frames; or "
            "train fewer layers (--train-last-n-layers / --head-only). Checkpoints of finished epochs are kept: "
            "re-running the same config resumes from them."
        ) from error


def train_member_distributed(
    plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef, num_processes: int,
    on_epoch: EpochHook | None = None,
) -> TrainOutcome:
    """Run train_member_in_process on num_processes ranks with torchrun and return rank 0's outcome.

    While the ranks train, rank 0's epoch records (lib.train.engine.EPOCHS_FILE) are passed to on_epoch.
    """
    work_dir = plan.work_dir
    # Decide resume-or-fresh once, before the ranks start, so they never race on the work dir.
    prepare_work_dir(work_dir, resume_key(plan, features, encoder), plan.owner)
    spec_file = work_dir / "launch_spec.json"
    outcome_file = work_dir / "launch_outcome.json"
    outcome_file.unlink(missing_ok=True)
    spec_file.write_text(
        MemberSpec(plan=plan, features=features, encoder=encoder, outcome_file=str(outcome_file)).model_dump_json()
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
        "-m", "lib.recipes.member", str(spec_file),
    ]
    seen = len(read_epoch_records(work_dir))  # a resumed run's earlier epochs were reported by their own run
    with subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1]) as ranks:
        try:
            returncode = None
            while returncode is None:
                try:
                    returncode = ranks.wait(timeout=EPOCH_POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
                for record in read_epoch_records(work_dir, seen):
                    seen += 1
                    if on_epoch is not None:
                        on_epoch(record)
        except BaseException:  # cancelled or interrupted: do not leave the ranks training (as subprocess.run)
            ranks.kill()
            raise
    if returncode != 0 or not outcome_file.is_file():
        raise RuntimeError(
            f"torchrun training of member {plan.config.name} failed (exit code {returncode}); "
            f"its ranks' output is above. Command: {' '.join(command)}"
        )
    return TrainOutcome.model_validate_json(outcome_file.read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = MemberSpec.model_validate_json(Path(argv[0]).read_text())
    outcome = train_member_in_process(spec.plan, spec.features, spec.encoder)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec.outcome_file).write_text(outcome.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
