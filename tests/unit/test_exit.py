"""What the astft command skips at its end: the flow-run heartbeats no one reads on its own server, and the
interpreter's last collection."""

from __future__ import annotations

import gc
import subprocess
import sys

from flows.server import quiet_heartbeats


def test_runs_on_astft_s_own_server_send_no_heartbeats_unless_the_user_asks(monkeypatch):
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.delenv("PREFECT_RUNNER_HEARTBEAT_FREQUENCY", raising=False)
    assert quiet_heartbeats() == {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    assert quiet_heartbeats() == {}


def test_the_command_freezes_the_collector_after_main_and_returns_main_s_code(monkeypatch):
    import flows.cli

    monkeypatch.setattr(flows.cli, "main", lambda: 3)
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    assert flows.cli.entry() == 3 and frozen == [True]


def test_python_m_flows_is_the_command():
    help_text = subprocess.run([sys.executable, "-m", "flows", "--help"], capture_output=True, text=True, check=True)
    assert "finetune" in help_text.stdout
