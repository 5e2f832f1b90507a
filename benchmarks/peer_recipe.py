"""The plain Hugging Face recipe astft races (benchmarks/bench_peer.py): written in the manner of transformers'
examples/pytorch/audio-classification/run_audio_classification.py, offline and without astft.

    python benchmarks/peer_recipe.py TRAIN_DIR VALIDATION_DIR CHECKPOINT_DIR OUTPUT_DIR --epochs 10 --batch-size 8

Stock ASTForAudioClassification from the checkpoint; clips read with soundfile into a `datasets` Dataset whose
features ASTFeatureExtractor computes per batch (set_transform, as the example does), every epoch again; HF
Trainer with per-epoch evaluation, load_best_model_at_end on accuracy (scikit-learn), cosine LR with warm-up.
Prints one JSON line: the phases (imports, data, Trainer set-up, train_runtime, evaluation, save) and accuracy.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
from datasets import Dataset  # noqa: E402
from sklearn.metrics import accuracy_score  # noqa: E402
from transformers import (  # noqa: E402
    ASTFeatureExtractor,
    ASTForAudioClassification,
    Trainer,
    TrainingArguments,
)

IMPORTED = time.perf_counter()


def read_split(folder: Path, label_names: list[str], rate: int, seconds: float) -> Dataset:
    rows = {"audio": [], "label": []}
    for label, name in enumerate(label_names):
        for path in sorted((folder / name).glob("*.wav")):
            samples, _ = soundfile.read(path, dtype="float32", always_2d=True)
            rows["audio"].append(samples.mean(axis=1)[: int(rate * seconds)])
            rows["label"].append(label)
    return Dataset.from_dict(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("train_dir", "validation_dir", "checkpoint", "output_dir"):
        parser.add_argument(name, type=Path)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--max-frames", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    label_names = sorted(p.name for p in args.train_dir.iterdir() if p.is_dir())
    extractor = ASTFeatureExtractor(sampling_rate=16000, num_mel_bins=128, max_length=args.max_frames)
    train = read_split(args.train_dir, label_names, 16000, 1.0)
    validation = read_split(args.validation_dir, label_names, 16000, 1.0)

    def transform(batch: dict) -> dict:
        features = extractor([np.asarray(a, np.float32) for a in batch["audio"]], sampling_rate=16000,
                             return_tensors="pt")
        return {"input_values": features["input_values"], "labels": batch["label"]}

    train.set_transform(transform)
    validation.set_transform(transform)
    data_ready = time.perf_counter()

    model = ASTForAudioClassification.from_pretrained(
        args.checkpoint, num_labels=len(label_names), label2id={n: i for i, n in enumerate(label_names)},
        id2label=dict(enumerate(label_names)), ignore_mismatched_sizes=True, max_length=args.max_frames,
    )
    arguments = TrainingArguments(
        output_dir=str(args.output_dir), eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch",
        num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps, load_best_model_at_end=True, metric_for_best_model="accuracy",
        save_total_limit=2, remove_unused_columns=False, use_cpu=True, seed=args.seed, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=arguments, train_dataset=train, eval_dataset=validation,
        compute_metrics=lambda p: {"accuracy": accuracy_score(p.label_ids, p.predictions.argmax(-1))},
    )
    set_up = time.perf_counter()
    result = trainer.train()
    trained = time.perf_counter()
    metrics = trainer.evaluate()
    evaluated = time.perf_counter()
    trainer.save_model(str(args.output_dir / "best"))
    saved = time.perf_counter()
    print(json.dumps({
        "phases": {
            "imports": IMPORTED - STARTED, "data": data_ready - IMPORTED, "trainer set-up": set_up - data_ready,
            "training (train_runtime)": result.metrics["train_runtime"], "evaluation": evaluated - trained,
            "save": saved - evaluated,
        },
        "accuracy": metrics["eval_accuracy"],
    }))


if __name__ == "__main__":
    main()
