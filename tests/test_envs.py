"""The conda envs parse and pin exactly what requirements.txt pins (conda channels are unreachable
here, so this consistency check is what keeps `--use-conda` honest)."""

from __future__ import annotations

import re

import yaml
from conftest import REPO


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_every_env_parses_and_agrees_with_the_pip_pins():
    pins = requirement_pins()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert {e.stem for e in envs} >= {"data", "train", "report"}
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        deps = spec["dependencies"]
        assert "python=3.11" in deps, env
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        for req in pip:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", req).groups()
            assert pins.get(name.lower()) == version, (
                f"{env.name}: {req} but requirements.txt pins {pins.get(name.lower())}"
            )


def test_every_rule_names_an_existing_env():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
        assert len(envs) == len(re.findall(r"^rule ", text, re.M)), f"{smk.name}: a rule without conda:"
        for env in envs:
            assert (smk.parent / env).resolve().exists(), f"{smk.name}: {env}"


def test_torch_pin_is_the_cpu_build_on_disk_not_an_unpinned_cuda_pull():
    assert requirement_pins()["torch"] == "2.13.0"
