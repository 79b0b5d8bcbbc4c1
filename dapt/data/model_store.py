"""Store each model of a study once, as safetensors weights + config + tokenizer, checked to load.

The later steps never fetch anything: they load the folder written here with
`AutoModelForMaskedLM.from_pretrained(dir)` (pretraining) or
`AutoModelForSequenceClassification.from_pretrained(dir)` (fine-tuning) and `load_tokenizer(dir)`.
Only safetensors are accepted, since pickled `pytorch_model.bin` files can run code when loaded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dapt.core.errors import UserError
from dapt.core.files import atomic_path, read_json
from dapt.core.redact import public_spec
from dapt.data.sources import DEFAULT_CACHE_DIR, describe_source, fetch, one_line_reason

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "chat_template.jinja",
)
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "*.model")  # without one, a tokenizer is empty
CODE_FILES = ("*.py",)  # custom modelling code, copied only with trust_remote_code
NOT_WEIGHTS = ("pytorch_model*.bin", "tf_model.h5", "flax_model.msgpack", "*.ckpt", "*.pt", "*.pth")
RANDOM_INIT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
#: random_init keys a config names otherwise (and does not map itself; DistilBERT maps the other three)
RANDOM_INIT_ALIASES = {"distilbert": {"intermediate_size": "hidden_dim"}}


def prepare_model(
    spec: dict, name: str, out_dir: str | os.PathLike, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR
) -> dict:
    """Write `out_dir` with the model's weights, config.json, tokenizer files and source.json.

    Sentence-transformers extras (pooling configs, READMEs) are left behind. With `random_init`
    the weights are a fresh, seeded model of the source's architecture at the given sizes that
    keeps the source's tokenizer (tiny test models). Returns a summary.
    """
    where = f"models.{name}"
    source = spec.get("source") or {}
    trust = bool(spec.get("trust_remote_code", False))
    random_init = spec.get("random_init")
    origin = describe_source(source)  # names the model in messages, never a temporary folder
    with model_folder(source, f"{where}.source", cache_dir, trust) as src:
        _check_folder(src, origin, where, need_weights=not random_init)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            patterns = ("config.json", *TOKENIZER_FILES, *(CODE_FILES if trust else ()))
            if random_init:
                _write_random_model(src, tmp, random_init, f"{where}.random_init", trust)
            else:
                patterns += WEIGHT_FILES
            for path in _matching(src, patterns):
                if not (tmp / path.name).exists():  # a random init wrote its own config.json
                    shutil.copyfile(path, tmp / path.name)
            (tmp / "source.json").write_text(json.dumps(public_spec(spec), indent=2, sort_keys=True) + "\n")
            summary = _check_loads(tmp, origin, trust)
    return {"model": name, **summary, "files": sorted(p.name for p in Path(out_dir).iterdir())}


def load_tokenizer(model_dir: str | os.PathLike) -> Any:
    """The tokenizer of a folder written by `prepare_model`, trusting remote code only if its spec did."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trusts_remote_code(model_dir))


@contextlib.contextmanager
def model_folder(
    source: dict, where: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, trust_remote_code: bool = False
) -> Iterator[Path]:
    """Yield a local folder holding the model files: a local path, an archive member, or a hub snapshot."""
    if source.get("kind") != "hf":
        with fetch(source, where, cache_dir) as path:
            if not path.is_dir():
                key = f"{where}.path" if source.get("kind") == "local" else f"{where}.member"
                raise UserError(key, f"{path.name} is a file, not a model folder", "point it at the model's folder")
            yield path
        return
    from huggingface_hub import snapshot_download

    if not source.get("id"):
        raise UserError(f"{where}.id", "is missing", "add id: <hub model id>")
    if not source.get("revision"):
        logger.warning("%s: no revision pinned for %s; the model may change between runs", where, source["id"])
    patterns = ["config.json", *WEIGHT_FILES, *TOKENIZER_FILES, *(CODE_FILES if trust_remote_code else [])]
    try:
        folder = snapshot_download(
            source["id"],
            revision=source.get("revision"),
            allow_patterns=patterns,
            cache_dir=Path(cache_dir) / "hf-hub",
            token=os.environ.get("HF_TOKEN") or False,  # the token comes only from the environment
        )
    except Exception as err:  # the hub client raises many unrelated types
        raise UserError(
            f"{where}.id",
            f"cannot download {source['id']!r}: {one_line_reason(err)}",
            "check id and revision; private models need HF_TOKEN set",
        ) from None
    yield Path(folder)


def _check_folder(src: Path, origin: str, where: str, need_weights: bool) -> None:
    """Refuse folders without config.json or readable safetensors weights before copying anything."""
    if not (src / "config.json").is_file():
        raise UserError(origin, "no config.json in the model folder", f"check {where}.source")
    if not _matching(src, VOCAB_FILES):
        raise UserError(
            origin,
            f"no tokenizer vocabulary in the model folder (none of {', '.join(VOCAB_FILES)})",
            "transformers would build an empty tokenizer; add the model's tokenizer files",
        )
    if not need_weights:
        return
    weights = _matching(src, ("*.safetensors",))
    if not weights:
        others = [p.name for p in _matching(src, NOT_WEIGHTS)]
        found = f" (found {', '.join(others)}; only safetensors are loaded)" if others else ""
        raise UserError(
            origin,
            f"no *.safetensors weights{found}",
            "convert once with transformers: from_pretrained(dir).save_pretrained(out_dir)",
        )
    from safetensors import safe_open

    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own error type for every kind of damage
            raise UserError(
                origin,
                f"{path.name} is not a readable safetensors file ({err})",
                "the download is truncated or corrupt; fetch it again",
            ) from None


def _write_random_model(src: Path, out: Path, sizes: dict, where: str, trust: bool) -> None:
    """Save a seeded, randomly initialised masked-LM of the source's config type with new sizes."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(src, trust_remote_code=trust)
    for key in RANDOM_INIT_KEYS:
        if key in sizes:
            name = RANDOM_INIT_ALIASES.get(config.model_type, {}).get(key, key)
            if not hasattr(config, name):
                raise UserError(f"{where}.{key}", f"model type {config.model_type!r} has no {key} to set")
            setattr(config, name, sizes[key])
    config = _per_layer_lists(config, where)
    if config.hidden_size % config.num_attention_heads:
        raise UserError(
            f"{where}.num_attention_heads",
            f"hidden_size {config.hidden_size} is not a multiple of {config.num_attention_heads} heads",
        )
    torch.manual_seed(sizes.get("seed", 0))
    try:
        model = AutoModelForMaskedLM.from_config(config, trust_remote_code=trust)
    except ValueError as err:
        raise UserError(where, f"cannot build a masked-LM of type {config.model_type!r}: {err}") from None
    model.save_pretrained(out)


def _per_layer_lists(config, where: str):
    """A config whose per-layer `layer_types` (ModernBERT's global/local attention pattern) has one entry per
    layer again after `num_hidden_layers` changed: rebuilt by its class from its rule (e.g. every third
    layer global), else refused (a shorter list fails inside the model with an IndexError)."""
    types = getattr(config, "layer_types", None)
    if not isinstance(types, list) or len(types) == config.num_hidden_layers:
        return config
    config = type(config).from_dict({**config.to_dict(), "layer_types": None})
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and len(types) != config.num_hidden_layers:
        raise UserError(
            f"{where}.num_hidden_layers",
            f"model type {config.model_type!r} lists a type per layer ({len(types)}) and cannot derive them for "
            f"{config.num_hidden_layers} layers",
            "keep the source's number of layers",
        )
    return config


def _check_loads(model_dir: Path, origin: str, trust: bool) -> dict:
    """Load tokenizer and masked-LM from the new folder, as the pretraining step will, and sum them up.

    A missing MLM head is fine (it is trained during adaptation); missing encoder weights are not:
    they would silently be random.
    """
    import transformers
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
    except Exception as err:  # tokenizer loading fails in many ways
        raise UserError(
            origin,
            f"cannot load the tokenizer: {type(err).__name__}: {err}",
            "the folder needs tokenizer.json or vocab files and tokenizer_config.json",
        ) from None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report is summed up below instead
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            model_dir, use_safetensors=True, trust_remote_code=trust, output_loading_info=True
        )
    except Exception as err:  # bad configs, shapes and remote code all surface here
        raise UserError(
            origin,
            f"cannot load as a masked-LM: {type(err).__name__}: {err}",
            "the workflow adapts models by masked-LM pretraining; use an encoder such as BERT",
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    prefix = model.base_model_prefix + "."
    encoder_missing = sorted(k for k in info["missing_keys"] if k.startswith(prefix))
    if encoder_missing or info["mismatched_keys"]:
        raise UserError(
            origin,
            f"the weights do not fit the config: missing {_some(encoder_missing)}, "
            f"wrong shape {_some(info['mismatched_keys'])}",
            "check that config.json belongs to them",
        )
    if info["missing_keys"]:
        logger.info(
            "%s: %d masked-LM head tensors are not in the checkpoint and start random",
            origin,
            len(info["missing_keys"]),
        )
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(
            origin,
            f"the tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows",
            "use the tokenizer the model was trained with",
        )
    return {
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_rows": rows,
        "tokenizer_size": len(tokenizer),
        "new_mlm_head_weights": len(info["missing_keys"]),
    }


def _matching(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The files directly in `folder` whose names match any of the glob patterns, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, g) for g in patterns))


def trusts_remote_code(model_dir: str | os.PathLike) -> bool:
    """Whether the model's config entry opted in to custom modelling code (``trust_remote_code: true``).

    Read from the folder's source.json (written here, carried along by every pretraining stage);
    a folder without one never runs remote code.
    """
    source_json = Path(model_dir) / "source.json"
    return bool(source_json.is_file() and read_json(source_json).get("trust_remote_code", False))


def _some(values: Any, n: int = 3) -> str:
    values = [str(v) for v in values]
    return (", ".join(values[:n]) + (f" (+{len(values) - n})" if len(values) > n else "")) or "none"
