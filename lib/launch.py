"""Train one member: in this process, or on several processes (GPUs) under torchrun.

`python -m lib.launch SPEC.json` is what torchrun starts on every rank; HF Trainer picks up the
distributed environment torchrun sets (one process per GPU, DistributedSampler, gradients
all-reduced) and only rank 0 writes checkpoints, logs and the outcome file.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from pydantic import BaseModel

from lib.checkpoint import EncoderRef
from lib.features import FeatureCacheRef, make_feature_extractor
from lib.model import apply_freezing, build_classifier
from lib.plan import RunPlan
from lib.training import TrainOutcome, claim_work_dir, prepare_work_dir, seed_everything, train_classifier
from lib.trunk import training_inputs

PARAMETER_COUNTS_FILE = "parameter_counts.json"


class TrainingOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message says which knobs to turn."""


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


def train_member(plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef) -> TrainOutcome:
    """Build the classifier from the stripped encoder, freeze per variant, and fine-tune it."""
    from transformers import ASTModel

    config = plan.config
    seed_everything(config.training.seed, config.training.deterministic)
    model = build_classifier(
        ASTModel.from_pretrained(encoder.path),
        features.label_names,
        pooling=config.model.pooling,
        classifier_dropout=config.model.classifier_dropout,
    )
    counts = apply_freezing(model, config.model.head_only, config.model.train_last_n_layers)
    work_dir = plan.work_dir
    claim_work_dir(work_dir)  # before writing into it: a work dir we did not make is refused, never written
    if int(os.environ.get("RANK", "0")) == 0:
        (work_dir / PARAMETER_COUNTS_FILE).write_text(json.dumps(counts))
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
        )
        return outcome.model_copy(update={"trunk_cache": inputs.trunk})
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
    plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef, num_processes: int
) -> TrainOutcome:
    """Run train_member on num_processes ranks with torchrun and return rank 0's outcome."""
    work_dir = plan.work_dir
    # Decide resume-or-fresh once, before the ranks start, so they never race on the work dir.
    prepare_work_dir(work_dir, resume_key(plan, features, encoder))
    spec_file = work_dir / "launch_spec.json"
    outcome_file = work_dir / "launch_outcome.json"
    outcome_file.unlink(missing_ok=True)
    spec_file.write_text(
        MemberSpec(plan=plan, features=features, encoder=encoder, outcome_file=str(outcome_file)).model_dump_json()
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
        "-m", "lib.launch", str(spec_file),
    ]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1])
    if result.returncode != 0 or not outcome_file.is_file():
        raise RuntimeError(
            f"torchrun training of member {plan.config.name} failed (exit code {result.returncode}); "
            f"its ranks' output is above. Command: {' '.join(command)}"
        )
    return TrainOutcome.model_validate_json(outcome_file.read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = MemberSpec.model_validate_json(Path(argv[0]).read_text())
    outcome = train_member(spec.plan, spec.features, spec.encoder)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec.outcome_file).write_text(outcome.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
