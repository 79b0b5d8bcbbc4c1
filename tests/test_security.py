"""Security properties of the package: no pickles, no remote code unless opted in, no leaked hub token.

Unsafe archives (absolute paths, `..`, escaping links) and unverified downloads are refused: see
tests/test_data.py (test_unsafe_archives_are_refused, test_url_without_sha256_is_refused, ...) and
the download cases of tests/test_bad_input.py.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import HUB_TOKEN_CANARY, REPO

SOURCES = sorted([*(REPO / "dapt").glob("*.py"), *(REPO / "scripts").glob("*.py")])


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            yield node


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def test_torch_load_only_with_weights_only():
    """torch.load of a pickle can run code: every call must pass weights_only=True; no pickle at all."""
    bad = []
    for path in SOURCES:
        for call in calls(path):
            func = call.func
            name = ast.unparse(func)
            if name.endswith("torch.load") or name == "load":
                if not is_true(keyword(call, "weights_only")):
                    bad.append(f"{where(path, call)}: {ast.unparse(call)}")
            if name in ("pickle.load", "pickle.loads", "joblib.load") or (
                name.endswith("np.load") and is_true(keyword(call, "allow_pickle"))
            ):
                bad.append(f"{where(path, call)}: {ast.unparse(call)}")
    assert bad == []


def test_models_load_from_safetensors_without_blanket_remote_code():
    """Every model class loads with use_safetensors=True; no call hard-codes trust_remote_code=True."""
    loads, bad = 0, []
    for path in SOURCES:
        for call in calls(path):
            if is_true(keyword(call, "trust_remote_code")):
                bad.append(f"{where(path, call)}: trust_remote_code=True")
            if not (isinstance(call.func, ast.Attribute) and call.func.attr == "from_pretrained"):
                continue
            owner = ast.unparse(call.func.value)
            if owner.startswith("AutoModel"):
                loads += 1
                if not is_true(keyword(call, "use_safetensors")):
                    bad.append(f"{where(path, call)}: {owner}.from_pretrained without use_safetensors=True")
            elif "Peft" in owner:  # peft falls back to a pickle: the caller must check for the safetensors file
                source = path.read_text()
                if "adapter_model.safetensors" not in source:
                    bad.append(f"{where(path, call)}: {owner}.from_pretrained without a safetensors check")
    assert loads >= 3 and bad == []


def test_remote_code_only_when_the_model_config_opts_in(tmp_path, clean_run):
    from dapt.models import trusts_remote_code

    (tmp_path / "plain").mkdir()
    assert not trusts_remote_code(tmp_path / "plain")
    for flag in (False, True):
        folder = tmp_path / f"opt-{flag}"
        folder.mkdir()
        (folder / "source.json").write_text(json.dumps({"source": {"kind": "local"}, "trust_remote_code": flag}))
        assert trusts_remote_code(folder) is flag
    # the opt-in travels with the model along a pretraining chain; the tiny study's model does not opt in
    for model in ("results/models/tiny", "results/pretrain/tiny/dapt-imdb/model"):
        assert (clean_run / model / "source.json").is_file(), model
        assert trusts_remote_code(clean_run / model) is False
        assert not list((clean_run / model).glob("*.py"))  # no modelling code copied without the opt-in


def test_hub_token_is_never_written(clean_run, reliability_inputs):
    """Both runs had HF_TOKEN set to a canary: no result, log, report or saved config may contain it."""
    canary = HUB_TOKEN_CANARY.encode()
    files = [p for d in (clean_run, reliability_inputs) for top in ("results", ".snakemake")
             for p in (d / top).rglob("*") if p.is_file()]
    assert len(files) > 50
    assert any(p.name == "provenance.json" for p in files) and any(p.suffix == ".log" for p in files)
    leaked = [str(p) for p in files if canary in p.read_bytes()]
    assert leaked == []


@pytest.mark.parametrize("url", ["https://user:hf_secret_canary_123@example.org/data.csv"])
def test_credentials_in_urls_are_not_kept(url):
    from dapt.redact import public_spec
    from dapt.sources import describe_source

    assert HUB_TOKEN_CANARY not in json.dumps(public_spec({"source": {"kind": "url", "url": url, "token": "x"}}))
    assert HUB_TOKEN_CANARY not in describe_source({"kind": "url", "url": url})
