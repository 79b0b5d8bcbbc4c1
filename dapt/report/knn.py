"""notes.md's kNN-TAPT section: what each selection chose (dapt.pretrain.knn_selection's selection.json), so a kNN-TAPT
score can be read against how much corpus text it rests on and what that text looks like."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dapt.core.errors import UserError
from dapt.core.files import read_json
from dapt.report.formatting import md_table


def read_selections(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """selection.json of each selection folder (or the file itself), with its folder's name."""
    out = []
    for path in paths:
        file = Path(path) / "selection.json" if Path(path).is_dir() else Path(path)
        try:
            info = read_json(file)
        except (OSError, ValueError) as err:
            raise UserError(str(file), f"cannot read the kNN-TAPT selection: {err}", "run select_knn again") from None
        parts = file.parent.parts  # .../knn/{model}/{task}/{corpus}-k{k}/selection.json
        out.append(
            {**info, "model": parts[-3] if len(parts) >= 3 else "", "task": parts[-2] if len(parts) >= 2 else ""}
        )
    return out


def knn_notes(paths: Sequence[str | os.PathLike]) -> str:
    """The section as Markdown ('' for a study without kNN-TAPT)."""
    selections = read_selections(paths)
    if not selections:
        return ""
    rows = [
        [
            s["task"],
            s["model"],
            s["corpus"],
            str(s["k"]),
            f"{s['queries']:,}",
            f"{s['pairs']:,}",
            f"{s['selected']:,} of {s['corpus_documents']:,} ({100 * s['selected_fraction']:.1f} %)",
            f"{s['documents_written']:,}",
            f"{s['hits']['max']}",
            f"{s['similarity']['nearest_mean']:.3f}",
            f"{s['similarity']['kth_mean']:.3f}",
        ]
        for s in selections
    ]
    lines = [
        "\n## kNN-TAPT selections\n",
        "Each training example's k nearest corpus documents by cosine similarity of mean-pooled sentence "
        "embeddings (the encoder reads the first tokens of each text, see `max length`); the union is "
        "pretrained on with the task's own training text. `written`: documents left after dropping exact "
        "repeats of a training text or of another chosen document.\n",
        md_table(
            [
                "task",
                "encoder",
                "corpus",
                "k",
                "queries",
                "pairs",
                "documents chosen",
                "written",
                "most queries per document",
                "mean cos, nearest",
                "mean cos, k-th",
            ],
            rows,
            "lllrrrrrrrr",
        ),
    ]
    for s in selections:
        lines.append(
            f"Examples ({s['task']}, {s['corpus']}, k {s['k']}; embedding max length "
            f"{s['embedding']['max_length']} tokens): a training example and its nearest document.\n"
        )
        for e in s["examples"]:
            lines.append(
                f"- *{_md(e['query'])}*  \n  → document {e['document']} (cos {e['similarity']:.3f}): "
                f"{_md(e['neighbour'])}"
            )
        lines.append("")
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text safe inside a Markdown list item (no emphasis or table markup from the data)."""
    for ch in ("\\", "*", "_", "|", "`", "[", "]", "<", ">"):
        text = text.replace(ch, "\\" + ch)
    return text
