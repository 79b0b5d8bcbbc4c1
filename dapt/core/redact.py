"""What counts as a secret, and how it is kept out of logs, messages and outputs: one home for both
the download path (source specs, URLs with credentials) and the report (config, environment)."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

#: Config keys and environment variable names that hold credentials.
SECRET_KEY = re.compile(r"token|secret|password|passwd|credential|api_?key|access_?key|auth", re.IGNORECASE)
REDACTED = "<redacted>"


def redact_url(url: str) -> str:
    """The URL without the user and password of its netloc."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        parts = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else ""))
    return urllib.parse.urlunsplit(parts)


def public_spec(spec: Any) -> Any:
    """The spec without anything secret-looking: keys named like credentials dropped, URLs without
    their user and password."""
    if isinstance(spec, dict):
        return {k: public_spec(v) for k, v in spec.items() if not SECRET_KEY.search(str(k))}
    if isinstance(spec, list):
        return [public_spec(v) for v in spec]
    if isinstance(spec, str) and re.match(r"^(https?|file)://", spec):
        return redact_url(spec)
    return spec


def redact_config(obj: Any) -> Any:
    """Copy of the config with credential-like keys kept but their values replaced by a marker."""
    if isinstance(obj, Mapping):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) else redact_config(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_config(v) for v in obj]
    return obj


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look like credentials (to be scrubbed from outputs)."""
    environ = os.environ if environ is None else environ
    vals = {v for k, v in environ.items() if SECRET_KEY.search(k) and v and len(v) >= 6}
    return sorted(vals, key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str] | None = None) -> str:
    """Replace any credential value by a marker: guards against a token that leaked into a config
    value or an input file."""
    for s in secret_values() if secrets is None else secrets:
        text = text.replace(s, REDACTED)
    return text
