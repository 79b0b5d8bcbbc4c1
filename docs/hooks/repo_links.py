"""MkDocs hook: links from a docs page to a repository file outside docs/ (`../config/README.md`).

On GitHub such a relative link opens the file; MkDocs would report it as "not found among
documentation files" and fail the strict build. This hook checks the file exists in the repository
(a missing one is a warning, so `mkdocs build --strict` still fails on it) and rewrites the link
for the site: to `extra.repo_files_url` + the path where mkdocs.yml sets that (a published
repository's file view), else to the link's text with the path beside it, since a built site has
no page for that file. Links inside docs/ are left to MkDocs' own validation.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.repo_links")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")


def _rewrite(text: str, page_dir: Path, docs_dir: Path, repo: Path, files_url: str, src: str) -> str:
    def replace(match: re.Match) -> str:
        label, url = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", url):
            return match.group(0)
        path, _, anchor = url.partition("#")
        target = Path(os.path.normpath(page_dir / path))  # not resolve(): a symlinked folder stays in the repo
        if target.is_relative_to(docs_dir):
            return match.group(0)
        if not target.is_relative_to(repo) or not target.exists():
            log.warning("Doc file '%s' links to '%s', which is not a file of the repository.", src, url)
            return match.group(0)
        rel = target.relative_to(repo).as_posix()
        if files_url:
            return f"[{label}]({files_url.rstrip('/')}/{rel}{'#' + anchor if anchor else ''})"
        return label if rel in label else f"{label} (`{rel}`)"

    return LINK.sub(replace, text)


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs_dir = Path(os.path.abspath(config["docs_dir"]))
    repo = Path(os.path.abspath(config["config_file_path"])).parent
    page_dir = Path(os.path.abspath(page.file.abs_src_path)).parent
    files_url = (config.get("extra") or {}).get("repo_files_url", "")
    parts, last = [], 0
    for fence in FENCE.finditer(markdown):  # code blocks are not links
        parts.append(_rewrite(markdown[last : fence.start()], page_dir, docs_dir, repo, files_url, page.file.src_uri))
        parts.append(fence.group(0))
        last = fence.end()
    parts.append(_rewrite(markdown[last:], page_dir, docs_dir, repo, files_url, page.file.src_uri))
    return "".join(parts)
