"""Every file and folder name astft writes, and the check that a publish destination is one it made.

<output_dir>/best/<name>    a published member: a link to a hidden version folder .<name>.v-* beside it
<output_dir>/ssl/<name>     a published encoder (astft pretrain), the same way
<output_dir>/runs/<name>    a member's work dir (Trainer checkpoints, logs); ssl-runs/<name> an encoder's
<cache_dir>/features/<key>  Arrow feature caches; encoders/<key> stripped encoders; trunk/<key> frozen-trunk outputs
"""

from __future__ import annotations

import os
from pathlib import Path

from lib.core.errors import ConfigError

# <output_dir>/...
BEST_FOLDER = "best"  # published members
SSL_FOLDER = "ssl"  # published encoders
RUNS_FOLDER = "runs"  # members' work dirs
SSL_RUNS_FOLDER = "ssl-runs"  # pretraining work dirs
# <cache_dir>/...
FEATURES_FOLDER = "features"
ENCODERS_FOLDER = "encoders"
TRUNK_FOLDER = "trunk"  # <cache_dir>/trunk/<key>: frozen-trunk outputs
META_FILE = "meta.json"  # beside every cache: file sizes, what proves it whole (lib.core.staging)

# a work dir
RUN_FILE = "run.json"  # marks a work dir as an astft run's own, with the fingerprint of its checkpoints
PARTIAL_RUN_FILE = f".{RUN_FILE}.partial"
LOGS_FOLDER = "logs"  # <output_dir>/logs/astft-<time>-<pid>.log: a CLI run's whole log, tracebacks included
LOCK_FILE = ".astft.lock"  # held (fcntl.flock) by the run using the work dir: lib.core.locks
LOCK_SUFFIX = ".lock"  # .<name>.lock beside a publish slot or a cache being built, held the same way
EPOCHS_FILE = "epochs.jsonl"  # one EpochRecord per line, beside the train log: what a watcher of a torchrun run reads
LOG_HISTORY_FILE = "log_history.json"  # Trainer's state.log_history of the run, written when it ends
BEST_MODEL_DIR = "best-model"  # a fine-tune's best epoch
FINAL_MODEL_DIR = "final-model"  # pretraining's last epoch
EVALUATION_DIR = "evaluation"  # a member's reports before publishing


def lock_file_for(folder: Path) -> Path:
    """The lock file of a folder that is replaced whole (a publish slot, a cache): beside it, not in it."""
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def train_log_name(run_name: str) -> str:
    """train_log<name>.txt: the per-epoch log of a run (the notebook's name), in its work dir and published."""
    return f"train_log{run_name}.txt"


# a model folder (checkpoint, member or encoder)
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "load_report.json"  # how an SSL checkpoint became the encoder (lib.model.checkpoint)

# a published member (besides the model and train_log<name>.txt)
MEMBER_FILE = "member.json"
RUN_CONFIG_FILE = "run_config.json"
LABEL_MAP_FILE = "label_map.json"
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.json"
PREDICTIONS_FILE = "validation_logits.npz"
TEST_PREDICTIONS_FILE = "test_logits.npz"
CALIBRATION_FILE = "calibration.json"
THRESHOLDS_FILE = "thresholds.json"  # a multi-label member's: the probability above which each class is predicted
# What evaluate_model writes and publishing copies beside the model (the test logits only with a test split; the
# confusion matrix for one label per clip, the thresholds for several).
REPORT_FILES = (
    METRICS_FILE, CONFUSION_FILE, PREDICTIONS_FILE, TEST_PREDICTIONS_FILE, CALIBRATION_FILE, THRESHOLDS_FILE,
)
TRAINING_CURVES_FILE = "training_curves.png"
CONFUSION_PLOT_FILE = "confusion_matrix.png"
AVERAGE_PRECISION_PLOT_FILE = "average_precision.png"  # a multi-label member's or ensemble's per-class AP bars
PRECISION_RECALL_PLOT_FILE = "precision_recall.png"  # ... and its micro-averaged precision-recall curve

# a published encoder
PRETRAIN_FILE = "pretrain.json"
PRETRAIN_CURVES_FILE = "pretraining_curves.png"

ONNX_FILE = "probabilities.onnx"  # astft export's default: in the member folder, or in best/ for the ensemble
CARD_FILE = "README.md"  # the model card of a member, and of the ensemble in best/ (lib.publish.card)

# <output_dir>/best/, beside the members
ENSEMBLE_FILE = "ensemble.json"
CROSSVAL_FILE = "crossval.json"  # a cross-validation's per-fold scores and their mean and spread, in best/
LEADERBOARD_PLOT_FILE = "leaderboard.png"
RELIABILITY_PLOT_FILE = "reliability.png"
# A member of one of these names would overwrite that file, or be overwritten; compared without case,
# since macOS and Windows folders are case-insensitive.
RESERVED_MEMBER_NAMES = frozenset(
    name.lower() for name in (ENSEMBLE_FILE, LEADERBOARD_PLOT_FILE, RELIABILITY_PLOT_FILE, CARD_FILE, ONNX_FILE,
                              AVERAGE_PRECISION_PLOT_FILE, PRECISION_RECALL_PLOT_FILE)
)


def check_publish_destination(destination: Path, kind: str = "member") -> None:
    """best/<name> (ssl/<name> for an encoder) may be replaced only if it is ours: a link to a version folder."""
    destination = Path(destination)
    if destination.is_symlink() or not os.path.lexists(destination):
        return
    what = "a plain folder" if destination.is_dir() else "a file"
    proof = MEMBER_FILE if kind == "member" else PRETRAIN_FILE
    article = "an" if kind[0] in "aeiou" else "a"
    raise ConfigError(
        f"{destination} is {what}, not {article} {kind} astft published (astft publishes {article} {kind} as a link "
        f"to a hidden version folder .{destination.name}.v-* beside it, which holds {proof}): publishing {kind} "
        f"{destination.name} would replace it. Move it away, or choose another name (--name) or --output-dir"
    )
