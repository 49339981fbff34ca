"""Whether the Hugging Face Hub can be reached: offline switches, the endpoint, a quick connection probe.
Asked before anything downloads or uploads (01's Hub datasets, pushing an export), so an offline machine gets a
clear reason in seconds instead of a long timeout."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_offline(variables: Iterable[str] = OFFLINE_VARIABLES) -> bool:
    """Whether one of `variables` is set to 1/on/yes/true (any case), as huggingface_hub reads HF_HUB_OFFLINE."""
    for var in variables:
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_unreachable(endpoint: str | None = None, timeout: float = 3.0) -> str | None:
    """None if the Hub endpoint (default: HF_ENDPOINT) accepts a TCP connection within `timeout`
    seconds, else why not. Never blocks much longer.

    Behind a proxy (HTTPS_PROXY/ALL_PROXY) a direct connection proves nothing, so the answer is None
    and the hub client decides. The probe runs in a daemon thread joined with a timeout, because name
    resolution ignores socket timeouts and can hang for a minute on machines without a network.
    """
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None  # behind a proxy only the hub client can tell
    endpoint = endpoint or hub_endpoint()
    url = urlparse(endpoint)
    if not url.hostname:
        return f"{endpoint!r} is not a URL with a host name (set HF_ENDPOINT to e.g. {DEFAULT_ENDPOINT})"
    host, port = url.hostname, url.port or (80 if url.scheme == "http" else 443)
    problem: list[str] = ["no answer within the timeout"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            problem[0] = ""
        except OSError as err:
            problem[0] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"no answer from {host}:{port} within {timeout:g} s"
    return problem[0] or None


def hub_endpoint() -> str:
    """The Hub's URL: HF_ENDPOINT when set (a mirror, a private Hub), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
