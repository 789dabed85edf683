"""The demo's processes: children die with the demo, and a port held by another process is refused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from serving.testing import free_port

ROOT = Path(__file__).resolve().parents[1]

# A demo stand-in: the real ServiceProcess and signal handling, with a sleeping child in place of a
# server, so the test needs no training. It prints the child's pid, then waits to be killed.
PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cli import demo_services
    demo_services.ensemble_command = lambda *a: [sys.executable, "-c", "import time; time.sleep(600)"]
    service = demo_services.ServiceProcess("sleeper", [], Path(sys.argv[1]))
    with demo_services.exit_on_termination(), demo_services.services_running([service]):
        service.start()
        print(service.proc.pid, flush=True)
        time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; its parent (init) reaps it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def _wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_children_die_with_the_demo(tmp_path: Path, sig: signal.Signals) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "child.log")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(sig)
        code = parent.wait(timeout=60)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig)
        assert _wait_gone(child), f"child {child} outlived the demo after {sig.name}"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        parent.kill()


def test_demo_refuses_a_port_another_process_holds_before_training(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable, "-m", "cli", "demo", "--once", "--out", str(tmp_path / "demo"),
                "--rest-port", str(taken), "--grpc-port", str(free_port()),
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr
        == f"error: port {taken} (--rest-port) is in use by another process; stop it or pick another\n"
    )
    assert not (tmp_path / "demo").exists()  # nothing trained or started
    assert not (tmp_path / "mlruns.db").exists()
