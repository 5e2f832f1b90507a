"""The temporary (ephemeral) Prefect server: a longer start-up timeout by default, one line if it still times out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import (
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)

from flows import (
    EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    ServerStartTimeout,
    prefect_server_defaults,
)

ROOT = Path(__file__).resolve().parents[2]


def test_flows_wait_longer_for_the_temporary_server_by_default():
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        pytest.skip("this shell sets the timeout itself")
    assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == 20  # Prefect's default
    with prefect_server_defaults():
        assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == EPHEMERAL_STARTUP_TIMEOUT_SECONDS == 120


def test_a_users_own_timeout_wins():
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 7}):  # as a profile sets it
        with prefect_server_defaults():
            assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == 7


def test_only_the_start_up_timeout_becomes_a_one_line_error():
    with pytest.raises(
        ServerStartTimeout, match=r"did not start within 120 s .*PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT"
    ):
        with prefect_server_defaults():
            raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server. stdout: ...")
    with pytest.raises(RuntimeError, match="something else"):
        with prefect_server_defaults():
            raise RuntimeError("something else")


@pytest.mark.slow
def test_astft_prints_one_line_when_the_server_does_not_start_in_time(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
               PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "flows", "demo", "--dir", str(tmp_path / "demo"), "--epochs", "1", "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("astft:")] == [
        "astft: the temporary Prefect server did not start within 1 s (a busy machine?): set "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300, or start a server once (prefect server start) "
        "and export PREFECT_API_URL=http://127.0.0.1:4200/api"
    ]
