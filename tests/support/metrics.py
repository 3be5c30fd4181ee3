"""Helpers for tests that read Prometheus expositions or need an unreachable server."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from deploy.embedded import free_port


def closed_port_url(url: str) -> str:
    """The same URL with its port swapped for one nothing listens on."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{host}:{free_port()}"))


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one series in a text exposition (labels in any order), None if absent."""
    for line in metrics.splitlines():
        if line.startswith("#") or not line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        if dict(re.findall(r'(\w+)="([^"]*)"', series)) == labels:
            return float(value)
    return None
