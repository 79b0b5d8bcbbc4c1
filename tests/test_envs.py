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


def torch_install_lines(setup: str) -> list[str]:
    """setup.sh's pip install lines, in order, up to and including the first that installs requirements."""
    lines = [ln.strip() for ln in setup.splitlines() if "pip install" in ln and not ln.strip().startswith("#")]
    end = next(i for i, ln in enumerate(lines) if "-r requirements.txt" in ln)
    return lines[: end + 1]


def test_torch_pin_is_the_cpu_build_on_disk_not_an_unpinned_cuda_pull():
    """What the pin is for: the installed torch is the CPU build (no CUDA runtime pulled in), it is the
    version requirements.txt pins, and setup.sh installs exactly that pin before the other requirements
    (so no package's unpinned `torch` dependency can pick a CUDA build first)."""
    from importlib import metadata

    import torch

    pin = requirement_pins()["torch"]
    assert torch.__version__.split("+")[0] == pin, f"installed torch {torch.__version__}, requirements pin {pin}"
    assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build (CUDA {torch.version.cuda})"
    cuda_wheels = sorted(
        d.metadata["Name"] for d in metadata.distributions() if (d.metadata["Name"] or "").startswith("nvidia-")
    )
    assert not cuda_wheels, f"CUDA runtime wheels installed beside torch: {cuda_wheels[:5]}"
    lines = torch_install_lines((REPO / "setup.sh").read_text())
    first = next((ln for ln in lines if "torch" in ln), "")
    assert "grep '^torch==' requirements.txt" in first and lines.index(first) < len(lines) - 1, lines


def test_torch_install_order_check_fails_when_setup_installs_requirements_first():
    setup = (REPO / "setup.sh").read_text()
    pin_line = next(ln for ln in setup.splitlines() if "grep '^torch==' requirements.txt" in ln)
    reordered = setup.replace(pin_line + "\n", "").replace(
        "pip install -q -r requirements.txt\n", "pip install -q -r requirements.txt\n" + pin_line + "\n"
    )
    lines = torch_install_lines(reordered)
    assert not any("torch" in ln for ln in lines)  # the pinned install no longer comes first
