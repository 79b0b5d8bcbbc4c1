"""Security properties of the package: no pickles, no remote code unless opted in, no leaked hub token,
no archive that writes outside its folder, no pickled adapter weights.

The behaviour tests here each fail when the protection they check is removed. More archive and
download cases: tests/test_data.py (test_unsafe_archives_are_refused, test_url_without_sha256_is_refused,
...) and the download cases of tests/test_bad_input.py.
"""

from __future__ import annotations

import ast
import hashlib
import http.server
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from pathlib import Path

import pytest
from conftest import HUB_TOKEN_CANARY, REPO, minilm_dir

SOURCES = sorted([*(REPO / "dapt").rglob("*.py"), *(REPO / "scripts").glob("*.py")])


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
    from dapt.data.model_store import trusts_remote_code

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
    files = [
        p
        for d in (clean_run, reliability_inputs)
        for top in ("results", ".snakemake")
        for p in (d / top).rglob("*")
        if p.is_file()
    ]
    assert len(files) > 50
    assert any(p.name == "provenance.json" for p in files) and any(p.suffix == ".log" for p in files)
    leaked = [str(p) for p in files if canary in p.read_bytes()]
    assert leaked == []


@pytest.mark.parametrize("url", ["https://user:hf_secret_canary_123@example.org/data.csv"])
def test_credentials_in_urls_are_not_kept(url):
    from dapt.core.redact import public_spec
    from dapt.data.sources import describe_source

    assert HUB_TOKEN_CANARY not in json.dumps(public_spec({"source": {"kind": "url", "url": url, "token": "x"}}))
    assert HUB_TOKEN_CANARY not in describe_source({"kind": "url", "url": url})


# --------------------------------------------------------------------------------------------
# Archives: nothing may be written outside the extraction folder
# --------------------------------------------------------------------------------------------


def take(tmp_path: Path, name: str, content: bytes, member: str) -> Path:
    """Extract `member` from the archive `content` (saved as `name`) the way a source's member is taken."""
    from dapt.data.archives import take_member

    archive = tmp_path / name
    archive.write_bytes(content)
    return take_member(archive, member, tmp_path / "extracted", "tasks.t.source")


def expect_refused(call, *parts: str) -> None:
    from dapt.core.errors import UserError

    with pytest.raises(UserError) as info:
        call()
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {info.value}"


@pytest.mark.parametrize("evil", ["../evil.csv", "pkg/../../evil.csv", "/tmp/evil.csv"])
def test_zip_entry_outside_the_archive_is_refused(tmp_path, evil):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pkg/rt.csv", "text,label\na,pos\n")
        zf.writestr(zipfile.ZipInfo(evil), "x")  # ZipInfo keeps the name as given
    expect_refused(lambda: take(tmp_path, "evil.zip", buffer.getvalue(), "pkg"), "refusing archive entry", evil)
    assert not (tmp_path / "extracted").exists() and not (tmp_path / "evil.csv").exists()


def test_zip_symbolic_link_is_refused(tmp_path):
    """zipfile would write the link as a small file; a reader that follows its text must never see it."""
    link = zipfile.ZipInfo("pkg/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pkg/rt.csv", "text,label\na,pos\n")
        zf.writestr(link, "../../outside")
    expect_refused(lambda: take(tmp_path, "link.zip", buffer.getvalue(), "pkg"), "refusing symbolic link", "pkg/link")
    assert not (tmp_path / "extracted" / "pkg" / "link").exists()


@pytest.mark.parametrize("target", ["../outside.txt", "pkg/../../outside.txt", "/etc/passwd"])
def test_tar_hard_link_out_of_the_archive_is_refused(tmp_path, target):
    """Our own check names the link (tarfile's data filter is a second, separate guard)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg/rt.csv")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"a,b\n"))
        hard = tarfile.TarInfo("pkg/hard")
        hard.type, hard.linkname = tarfile.LNKTYPE, target
        tar.addfile(hard)
    expect_refused(
        lambda: take(tmp_path, "hard.tar.gz", buffer.getvalue(), "pkg"), "refusing link 'pkg/hard'", "points outside"
    )
    assert not (tmp_path / "extracted").exists()


# --------------------------------------------------------------------------------------------
# Adapters: peft falls back to a pickle (adapter_model.bin); only safetensors may load
# --------------------------------------------------------------------------------------------


def _load_finetuned():
    """`load_finetuned` wherever the package keeps it (dapt.finetune.fine_tuning or dapt.finetune.methods)."""
    try:
        from dapt.finetune.methods import load_finetuned
    except ImportError:
        from dapt.finetune.fine_tuning import load_finetuned
    return load_finetuned


@pytest.fixture(scope="module")
def lora_artifacts(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(tiny base model, LoRA artifact saved as safetensors, the same saved only as adapter_model.bin)."""
    import peft
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification

    root = tmp_path_factory.mktemp("adapters")
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    base = root / "base"
    BertForMaskedLM(config).save_pretrained(base)
    tok.save_pretrained(base)
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"])
    classifier = BertForSequenceClassification.from_pretrained(base, num_labels=2, use_safetensors=True)
    model = peft.get_peft_model(classifier, lora)
    method = {"method": {"kind": "lora", "r": 2, "alpha": 4}, "labels": ["neg", "pos"], "total_steps": 1}
    folders = []
    for name, safe in (("safe", True), ("pickle", False)):
        folder = root / name
        model.save_pretrained(folder, safe_serialization=safe)
        (folder / "method.json").write_text(json.dumps(method))
        folders.append(folder)
    assert (root / "pickle" / "adapter_model.bin").is_file()
    assert not (root / "pickle" / "adapter_model.safetensors").exists()
    return base, *folders


def test_adapter_with_only_a_pickle_is_refused(lora_artifacts):
    base, safe, pickled = lora_artifacts
    load_finetuned = _load_finetuned()
    model, _ = load_finetuned(str(safe), str(base), ["neg", "pos"])  # the artifact itself is sound
    assert model is not None
    expect_refused(lambda: load_finetuned(str(pickled), str(base), ["neg", "pos"]), "no adapter_model.safetensors")


# --------------------------------------------------------------------------------------------
# The hub download path: a local server stands in for the Hugging Face hub (HF_ENDPOINT)
# --------------------------------------------------------------------------------------------

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = re.compile(r"^/(?:datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
REPO_INFO = re.compile(r"^/api/(?:datasets|models)/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
TREE = re.compile(r"^/api/(?:datasets|models)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")


class FakeHub:
    """The few hub API calls `datasets.load_dataset` and `snapshot_download` make, for one repository.

    Serves `files` at commit HUB_COMMIT, or answers every request with `status` (e.g. 401); records
    each request's method, path and Authorization header. Listens on 127.0.0.1 only and shuts itself
    down after `lifetime_s` even if the test's finalizer never runs.
    """

    def __init__(self, files: dict[str, bytes], status: int | None = None, lifetime_s: float = 300) -> None:
        self.files, self.status = files, status
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                if hub.status:
                    self.send_error(hub.status)
                    return
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                if match := RESOLVE.match(path):
                    self.reply(hub.files.get(match.group(3)), "application/octet-stream")
                elif REPO_INFO.match(path):
                    info = {
                        "id": "org/tiny",
                        "sha": HUB_COMMIT,
                        "private": True,
                        "siblings": [{"rfilename": name} for name in hub.files],
                    }
                    self.reply(json.dumps(info).encode(), "application/json")
                elif match := TREE.match(path):
                    under = (match.group(3) or "").strip("/")
                    entries = [
                        {"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                        for name, content in hub.files.items()
                        if posix_parent(name) == under
                    ]
                    self.reply(json.dumps(entries).encode(), "application/json")
                else:
                    self.reply(None, "")

            do_HEAD = do_GET

            def reply(self, content: bytes | None, content_type: str) -> None:
                if content is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.send_header("ETag", f'"{hashlib.sha1(content).hexdigest()}"')
                self.send_header("X-Repo-Commit", HUB_COMMIT)
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(content)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.deadline = threading.Timer(lifetime_s, self.httpd.shutdown)
        self.deadline.daemon = True
        self.deadline.start()

    def stop(self) -> None:
        self.deadline.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def posix_parent(name: str) -> str:
    return name.rpartition("/")[0]


@pytest.fixture
def fake_hub():
    """Start FakeHub(files, status) on demand; every hub started is stopped, also when the test fails."""
    hubs: list[FakeHub] = []

    def start(files: dict[str, bytes], status: int | None = None) -> FakeHub:
        hubs.append(FakeHub(files, status))
        return hubs[-1]

    yield start
    for hub in hubs:
        hub.stop()
    assert not any(hub.thread.is_alive() for hub in hubs)


def hub_env(hub: FakeHub, home: Path) -> dict[str, str]:
    """The hub client pointed at the fake hub (HF_ENDPOINT is read at import, so only in a subprocess)."""
    env = {k: v for k, v in os.environ.items() if not re.search(r"^HF_|_OFFLINE$", k)}
    return {
        **env,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": HUB_TOKEN_CANARY,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def run_hub_script(script: str, spec: dict, out: str, hub: FakeHub, cwd: Path, *args: str):
    cmd = [
        sys.executable,
        str(REPO / "scripts" / script),
        "--config-json",
        json.dumps(spec),
        "--out",
        out,
        "--cache-dir",
        "results/.cache/downloads",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=hub_env(hub, cwd / "hf-home"), capture_output=True, text=True, timeout=600)


def assert_token_nowhere(proc: subprocess.CompletedProcess, hub: FakeHub, folder: Path) -> None:
    """The token went to the hub (Authorization: Bearer) and nowhere else: not stdout, stderr or any file."""
    assert any(auth == f"Bearer {HUB_TOKEN_CANARY}" for _, _, auth in hub.requests), hub.requests
    assert HUB_TOKEN_CANARY not in proc.stdout + proc.stderr
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert [str(p) for p in files if HUB_TOKEN_CANARY.encode() in p.read_bytes()] == []


HF_TASK = {
    "source": {"kind": "hf", "id": "org/tiny", "split": "train", "columns": {"text": "sentence", "label": "sentiment"}},
    "carve": {"test": 40, "validation": 40},
}


@pytest.mark.parametrize("status", [401, 404])
def test_hub_dataset_refused_by_the_hub_is_one_error_line_without_the_token(tmp_path, fake_hub, status):
    hub = fake_hub({}, status)
    proc = run_hub_script(
        "prepare_data.py", HF_TASK, "results/data/tasks/t", hub, tmp_path, "--kind", "task", "--name", "t"
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.stderr.strip().splitlines()[-1] == errors[0] and len(errors) == 1
    assert errors[0].startswith("error: tasks.t.source.id: cannot load dataset 'org/tiny'")
    assert not (tmp_path / "results" / "data" / "tasks" / "t").exists()
    assert_token_nowhere(proc, hub, tmp_path)


def test_hub_dataset_download_keeps_the_token_out_of_every_output(tmp_path, fake_hub):
    hub = fake_hub({"train.csv": (REPO / "tests" / "data" / "rt_sample.csv").read_bytes()})
    proc = run_hub_script(
        "prepare_data.py", HF_TASK, "results/data/tasks/t", hub, tmp_path, "--kind", "task", "--name", "t"
    )
    assert proc.returncode == 0, proc.stderr
    assert "task t: train 320, validation 40, test 40 rows" in proc.stdout
    summary = json.loads((tmp_path / "results" / "data" / "tasks" / "t" / "summary.json").read_text())
    assert summary["source"]["id"] == "org/tiny"
    assert any(
        "/resolve/" in path and path.endswith("/train.csv") for method, path, _ in hub.requests if method == "GET"
    )
    assert_token_nowhere(proc, hub, tmp_path)


def minilm_files() -> dict[str, bytes]:
    """A real small model's files, served by the fake hub as model org/tiny."""
    return {p.name: p.read_bytes() for p in Path(minilm_dir()).iterdir() if p.is_file()}


@pytest.mark.parametrize("status", [None, 401])
def test_hub_model_download_keeps_the_token_out_of_every_output(tmp_path, fake_hub, status):
    hub = fake_hub(minilm_files(), status)
    spec = {"source": {"kind": "hf", "id": "org/tiny", "revision": HUB_COMMIT}}
    proc = run_hub_script("prepare_model.py", spec, "results/models/m", hub, tmp_path, "--name", "m")
    if status is None:
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "results" / "models" / "m" / "model.safetensors").is_file()
        assert any(path.endswith("/model.safetensors") for method, path, _ in hub.requests if method == "GET")
    else:
        assert proc.returncode == 2, proc.stderr
        assert "error: models.m.source.id: cannot download 'org/tiny'" in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0]  # one line, the last
        assert not (tmp_path / "results" / "models" / "m").exists()
    assert_token_nowhere(proc, hub, tmp_path)
