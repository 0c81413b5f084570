"""Run ``gateway dimse`` (or ``gateway forwards run``) beside ``gateway serve``'s HTTP server.

The child reports ``DIMSE-READY …`` once it listens and ``DIMSE-STOPPED`` when it stops
on request, on its standard output. The supervisor reads those lines (an end of file
means the child is gone, whoever reaped it: gunicorn's master reaps every child):

- gone before ready (e.g. the port is taken): logged as an error, not restarted, the HTTP
  server keeps serving;
- gone after ready without having stopped on request (a crash): restarted after a delay;
- stopped on request: done.

The child watches its parent (``--parent-pid``) and stops when the parent is gone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading

logger = logging.getLogger(__name__)

READY, STOPPED = "DIMSE-READY", "DIMSE-STOPPED"


class ChildSupervisor:
    def __init__(self, args: list[str], *, name: str = "DIMSE listener", restart_delay: float = 5.0):
        self.args = args
        self.name = name
        self.restart_delay = restart_delay
        self._stopping = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ChildSupervisor":
        self._thread = threading.Thread(target=self._loop, name="dimse-supervisor", daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "gateway.cli", *self.args, "--parent-pid", str(os.getpid())]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc = self._spawn()
            ready = stopped = False
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith(READY):
                    ready = True
                    print(f"{self.name}: {line[len(READY):].strip()}", file=sys.stderr, flush=True)
                elif line.startswith(STOPPED):
                    stopped = True
                elif line:
                    print(line, file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
            if self._stopping.is_set() or stopped:
                return
            if not ready:
                logger.error("%s did not start (see the messages above); the HTTP server keeps serving without it",
                             self.name)
                return
            logger.error("%s stopped unexpectedly; restarting it in %.0f s", self.name, self.restart_delay)
            self._stopping.wait(self.restart_delay)

    def stop(self, timeout: float = 30) -> None:
        self.terminate()
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(5)

    def terminate(self) -> None:
        """Ask the child to stop, without waiting."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()


class ChildGroup:
    """Several supervised children (``dimse.listeners``), started and stopped together."""

    def __init__(self, children: list[ChildSupervisor]):
        self.children = children

    def start(self) -> "ChildGroup":
        for child in self.children:
            child.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        for child in self.children:  # all at once: each stops its associations in its own time
            child.terminate()
        for child in self.children:
            child.stop(timeout)
