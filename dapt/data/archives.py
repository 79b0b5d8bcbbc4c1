"""Taking one file or folder out of a tar or zip archive without letting the archive write elsewhere.

Archives come from the network, so every entry is checked before anything is extracted: no
absolute paths, no `..`, no link that points outside the archive, no symbolic links from zips.
"""

from __future__ import annotations

import difflib
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from dapt.core.errors import UserError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ZIP_SUFFIXES = (".zip", ".whl")
UNSAFE_FIX = "the archive is malformed or malicious; do not use it"


def take_member(archive: Path, member: str | None, dest: Path, where: str) -> Path:
    """Return the file itself, or extract `member` (file or folder) from the archive safely."""
    name = archive.name.lower()
    is_tar, is_zip = name.endswith(TAR_SUFFIXES), name.endswith(ZIP_SUFFIXES)
    if not (is_tar or is_zip):
        if member:
            raise UserError(
                f"{where}.member", f"{archive.name} is not an archive (.zip, .tar, .tar.gz, .tgz)", "remove member:"
            )
        return archive
    if not member:
        raise UserError(
            f"{where}.member",
            f"{archive.name} is an archive; say which file or folder to take",
            "add member: <path inside the archive>",
        )
    member = posixpath.normpath(member.strip("/"))
    if _unsafe_name(member):
        raise UserError(f"{where}.member", f"{member!r} points outside the archive", "use a relative path without ..")
    try:
        (_extract_tar if is_tar else _extract_zip)(archive, member, dest, where)
    except tarfile.FilterError as err:
        raise UserError(str(archive), f"refusing unsafe archive entry: {err}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
        raise UserError(
            str(archive),
            f"cannot read the archive, it is truncated or corrupt ({err})",
            f"delete {archive} and run again to download it anew",
        ) from None
    return dest / member


def _extract_tar(archive: Path, member: str, dest: Path, where: str) -> None:
    """Check every entry and link of the whole archive, then extract the chosen ones (data filter)."""
    with tarfile.open(archive) as tar:
        entries = tar.getmembers()  # reads the whole archive, so a truncated one fails here
        for entry in entries:
            link = None
            if entry.issym():
                link = posixpath.join(posixpath.dirname(entry.name), entry.linkname)
            elif entry.islnk():
                link = entry.linkname
            _check_entry(archive, entry.name, link)
        chosen = _choose(archive, [e.name for e in entries], member, where)
        tar.extractall(dest, members=[e for e in entries if e.name in chosen], filter="data")


def _extract_zip(archive: Path, member: str, dest: Path, where: str) -> None:
    """Check every entry's name, then extract the chosen ones; a symbolic link among them is refused."""
    with zipfile.ZipFile(archive) as zf:
        entries = zf.infolist()
        for entry in entries:
            _check_entry(archive, entry.filename, None)
        chosen = _choose(archive, [e.filename for e in entries], member, where)
        for entry in entries:
            if entry.filename in chosen:
                if stat.S_ISLNK(entry.external_attr >> 16):
                    raise UserError(str(archive), f"refusing symbolic link {entry.filename!r} in a zip archive")
                zf.extract(entry, dest)


def _check_entry(archive: Path, name: str, link: str | None) -> None:
    """Refuse an entry whose path, or link target (relative to the archive root), leaves the archive."""
    if _unsafe_name(name):
        raise UserError(str(archive), f"refusing archive entry {name!r}: absolute or outside the archive", UNSAFE_FIX)
    if link is not None and (link.startswith("/") or _unsafe_name(posixpath.normpath(link))):
        raise UserError(str(archive), f"refusing link {name!r} -> {link!r}: it points outside the archive", UNSAFE_FIX)


def _unsafe_name(name: str) -> bool:
    """Absolute (POSIX or Windows) or climbing out with `..`."""
    return name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in re.split(r"[/\\]", name)


def _choose(archive: Path, names: list[str], member: str, where: str) -> set[str]:
    """The entries that are `member` or lie under it ("./a/b" and "a/b" name the same entry)."""
    normal = {name: posixpath.normpath(name) for name in names}
    chosen = {name for name, norm in normal.items() if norm == member or norm.startswith(member + "/")}
    if not chosen:
        close = difflib.get_close_matches(member, list(normal.values()), n=3)
        hint = f"close matches: {close}" if close else f"it has {len(names)} entries"
        raise UserError(f"{where}.member", f"{member!r} is not in {archive.name} ({hint})", "fix member:")
    return chosen
