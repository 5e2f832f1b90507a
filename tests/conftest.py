"""Shared fixtures: tiny AST configs, synthetic audio, SSL-style checkpoints, one Prefect harness."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Prefect reads these at import: isolate its home, result storage and analytics before any import.
_PREFECT_TMP = Path(tempfile.mkdtemp(prefix="astft-tests-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_TMP / "home")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_PREFECT_TMP / "storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("PREFECT_API_URL", None)
# A CLI run without PREFECT_API_URL starts astft's local Prefect server there (stopped when the session ends).
os.environ["ASTFT_HOME"] = str(_PREFECT_TMP / "astft-home")
# In-process CLI calls that stop at their plan start no server early (tests/integration/test_server.py's runs do).
os.environ["ASTFT_EARLY_SERVER_START"] = "0"
# CLI runs in subprocesses run in their own process and leave no warm process behind (tests/unit/test_warm.py's do).
os.environ["ASTFT_WARM"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from lib.data.features import FeatureParams, build_feature_cache  # noqa: E402
from lib.data.scan import scan_dataset  # noqa: E402
from lib.example import (  # noqa: E402
    make_example_dataset,
    make_example_test_split,
)
from tests.factories import make_ssl_checkpoint  # noqa: E402
from tests.helpers import small_config  # noqa: E402

TEST_CLASSES = ("noise_burst", "tone_high", "tone_low")


@pytest.fixture(scope="session")
def dataset_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(train, validation); a test split beside them is the test_split fixture, used only where asked for."""
    root = tmp_path_factory.mktemp("data")
    dirs = make_example_dataset(root, train_per_class=16, validation_per_class=6, classes=TEST_CLASSES, seed=1)
    make_example_test_split(root, per_class=6, classes=TEST_CLASSES, seed=1)
    return dirs


@pytest.fixture(scope="session")
def test_split(dataset_dirs) -> Path:
    return dataset_dirs[0].parent / "test"


@pytest.fixture(scope="session")
def ssl_checkpoint(tmp_path_factory) -> Path:
    folder, _ = make_ssl_checkpoint(tmp_path_factory.mktemp("ssl") / "checkpoint-7", small_config(), seed=3)
    return folder


@pytest.fixture(scope="session")
def features(dataset_dirs, tmp_path_factory):
    """The session dataset's feature cache at 64 mel bins x 64 frames (the tiny checkpoint's input)."""
    manifest = scan_dataset(*dataset_dirs)
    ref, _ = build_feature_cache(manifest, FeatureParams(num_mel_bins=64, max_frames=64), tmp_path_factory.mktemp("c"))
    return ref


@pytest.fixture(scope="session", autouse=True)
def stop_local_prefect_server():
    """No server outlives the tests: stop the local server a CLI run of theirs may have started in ASTFT_HOME."""
    yield
    from flows.server import running_state, server_folder, stop_local_server

    if running_state(server_folder()) is not None:
        stop_local_server(force=True)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_unconfigure(config):
    """The session's Prefect and astft homes go with it (the servers started there are stopped by then)."""
    import shutil

    shutil.rmtree(_PREFECT_TMP, ignore_errors=True)
