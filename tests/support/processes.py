"""Stopping the child processes tests start (Prometheus, Alertmanager, the adapter)."""

from __future__ import annotations

import subprocess
from typing import Optional


def stop(proc: Optional[subprocess.Popen], timeout: float = 10.0) -> Optional[int]:
    """SIGTERM and wait up to ``timeout`` s; SIGKILL if it does not exit. Idempotent.

    Returns the exit status (negative: killed by that signal), ``None`` without a process.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
