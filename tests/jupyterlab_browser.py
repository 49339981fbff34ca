"""A JupyterLab server on 127.0.0.1 and headless Debian Chromium driven by Playwright, for the browser tests.

Facts this relies on (DESIGN.md §4): Playwright's Python package drives /usr/bin/chromium through
`executable_path` (never `playwright install`); JupyterLab as root needs --allow-root; the kernel is
ready when the status bar says "Idle" *and* the kernel exists; anywidget puts a widget's classes on
the plot node itself. Notebook commands go through `window.jupyterapp` (--expose-app-in-browser);
clicks and typing go through the page like a person's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("NBKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Lab settings for a quiet, deterministic page: no news or update checks, every cell attached to the
# DOM (no windowing), and no autosave dialog racing the test.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


def missing_requirements() -> str:
    """Why the browser tests cannot run here, or "" when they can."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}: `make test` installs it when run as root (or: apt-get install -y chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[browser]' (make install does)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_group_ended_with_parent() -> None:
    """In the child: a process group of its own (to stop it with its kernels), and SIGTERM when the
    test process dies, so a killed test run leaves no server behind (Linux's PR_SET_PDEATHSIG)."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class LabServer:
    """`jupyter lab` on a free loopback port with its own settings, stopped with its whole process group."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root, self.home = root, home
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "jupyterlab.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> LabServer:
        settings = self.home / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            path = settings / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = dict(
            os.environ,
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(self.home / "lab-workspaces"),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        command = [
            str(Path(sys.executable).parent / "jupyter"),
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={self.token}",
            "--expose-app-in-browser",
            "--LabApp.news_url=",
            "--ServerApp.terminals_enabled=False",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=own_group_ended_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s: {self.log_path.read_text()[-2000:]}")

    def shutdown_kernels(self) -> None:
        """End every kernel (each notebook test starts its own; a trained model should not linger)."""
        for kind in ("sessions", "kernels"):
            with urllib.request.urlopen(f"{self.url}/api/{kind}?token={self.token}", timeout=10) as reply:
                for item in json.load(reply):
                    request = urllib.request.Request(
                        f"{self.url}/api/{kind}/{item['id']}?token={self.token}", method="DELETE"
                    )
                    with contextlib.suppress(OSError):
                        urllib.request.urlopen(request, timeout=30).close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and the kernels it started
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.process:
            self.log.close()


class NotebookPage:
    """One open notebook in the Lab page: run cells through Lab's commands, read prompts and outputs."""

    def __init__(self, page: Any, lab: LabServer, path: str) -> None:
        self.page, self.lab, self.path = page, lab, path

    def open(self, timeout: float = 120) -> NotebookPage:
        # A workspace of its own, reset: only this notebook is open, so Lab's commands act on it.
        workspace = "".join(ch for ch in self.path if ch.isalnum())
        self.page.goto(f"{self.lab.url}/lab/workspaces/{workspace}/tree/{self.path}?reset&token={self.lab.token}")
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout * 1000)
        self.page.wait_for_function(
            "(path) => window.jupyterapp && jupyterapp.shell.currentWidget"
            " && jupyterapp.shell.currentWidget.context.path === path",
            arg=self.path,
            timeout=timeout * 1000,
        )
        # The toolbar says idle before a kernel exists; wait for a real kernel that is idle.
        self.page.wait_for_function(
            "() => { const w = window.jupyterapp && jupyterapp.shell.currentWidget;"
            " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
            " return k && k.status === 'idle' && k.connectionStatus === 'connected'; }",
            timeout=timeout * 1000,
        )
        self.page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout * 1000)
        return self

    def command(self, name: str, index: int | None = None) -> None:
        """Start a Lab command with the given cell active (e.g. notebook:run-cell, notebook:run-all-above).
        Returns at once: run commands resolve only when the cells finish, and the tests watch the page
        meanwhile (see wait_until_done)."""
        self.page.evaluate(
            "([name, index]) => { const nb = jupyterapp.shell.currentWidget.content;"
            " if (index !== null) { nb.activeCellIndex = index; nb.mode = 'command'; }"
            " jupyterapp.commands.execute(name); }",
            [name, index],
        )

    def cell(self, index: int):
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def cell_index(self, text: str) -> int:
        """The first cell whose source contains `text`."""
        index = self.page.evaluate(
            "(text) => jupyterapp.shell.currentWidget.content.widgets.findIndex("
            "c => c.model.sharedModel.getSource().includes(text))",
            text,
        )
        assert index >= 0, f"{self.path}: no cell contains {text!r}"
        return index

    def prompts(self) -> list[str]:
        """Execution counts of the code cells, as Lab shows them: '' (never run), '*' (running/queued) or a number."""
        return self.page.evaluate(
            "() => jupyterapp.shell.currentWidget.content.widgets.filter(c => c.model.type === 'code')"
            ".map(c => c.promptNode ? c.promptNode.textContent.replace(/[\\[\\]:\\s]/g, '') : '')"
        )

    def wait_until_done(self, last: int | None = None, after: int = 0, timeout: float = 600) -> None:
        """Wait until no code cell is queued or running and every code cell up to `last` shows an
        execution count above `after` (the highest count before this run)."""
        self.page.wait_for_function(
            "([last, after]) => { const cells = jupyterapp.shell.currentWidget.content.widgets;"
            " const upto = last === null ? cells.length - 1 : last;"
            " const prompts = cells.map(c => c.model.type === 'code' && c.promptNode"
            "   ? c.promptNode.textContent.replace(/[\\[\\]:\\s]/g, '') : null);"
            " if (prompts.some(p => p === '*')) return false;"
            " if (cells.some(c => c.model.type === 'code'"
            "   && c.model.outputs.toJSON().some(o => o.output_type === 'error'))) return true;"
            " const target = prompts[upto];"
            " return (target === null || (/^[0-9]+$/.test(target) && Number(target) > after))"
            "   && prompts.slice(0, upto + 1).every(p => p === null || /^[0-9]+$/.test(p)); }",
            arg=[last, after],
            timeout=timeout * 1000,
            polling=500,
        )

    def highest_count(self) -> int:
        return max([int(p) for p in self.prompts() if p.isdigit()] or [0])

    def run_all(self, timeout: float = 600) -> None:
        self.command("notebook:run-all-cells")
        self.wait_until_done(timeout=timeout)

    def run_cell(self, index: int, timeout: float = 600) -> None:
        after = self.highest_count()
        self.command("notebook:run-cell", index)
        self.wait_until_done(index, after, timeout=timeout)

    def run_all_above(self, index: int, timeout: float = 600) -> None:
        self.command("notebook:run-all-above", index)
        self.wait_until_done(index - 1, timeout=timeout)

    def errors(self) -> list[str]:
        """Tracebacks shown in any cell's output."""
        texts = self.page.locator(".jp-OutputArea-output").all_inner_texts()
        return [t[:1500] for t in texts if "Traceback (most recent call last)" in t or "Error Traceback" in t]

    def output_text(self, index: int) -> str:
        return "\n".join(self.cell(index).locator(".jp-OutputArea-output").all_inner_texts())


def launch_browser(playwright: Any, profile: Path):
    """Headless Debian Chromium with a fresh profile directory."""
    return playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1400, "height": 1000},
    )
