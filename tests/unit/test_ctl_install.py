"""The installer's pure parts: the agent wheel, platform checks and install plans."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nnflash.controller.agent_install import InstallError, pip_platform_tags, plan_install, resolve_prefix
from nnflash.controller.agent_wheel import AGENT_VERSION, build_agent_wheel, wheel_name

PI_OS = {
    "machine": "aarch64",
    "bits": 64,
    "arch": "aarch64",
    "system": "Linux",
    "implementation": "CPython",
    "python": "3.11.2",
    "libc": "glibc",
    "libc_version": "2.36",
}


def test_agent_wheel_is_reproducible_and_holds_only_the_agent(tmp_path):
    path, sha = build_agent_wheel(tmp_path / "a")
    path2, sha2 = build_agent_wheel(tmp_path / "b")
    assert path.name == wheel_name() == f"nnflash_agent-{AGENT_VERSION}-py3-none-any.whl"
    assert sha == sha2 == hashlib.sha256(path.read_bytes()).hexdigest()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        meta = zf.read(f"nnflash_agent-{AGENT_VERSION}.dist-info/METADATA").decode()
        entry = zf.read(f"nnflash_agent-{AGENT_VERSION}.dist-info/entry_points.txt").decode()
        record = zf.read(f"nnflash_agent-{AGENT_VERSION}.dist-info/RECORD").decode()
    packages = {n.split("/")[0] for n in names}
    assert packages == {"nnflash_agent", f"nnflash_agent-{AGENT_VERSION}.dist-info"}
    assert "nnflash_agent/cli.py" in names and "nnflash_agent/data/selftest.onnx" in names
    assert "nnflash_agent/data/selftest.tflite" in names and "nnflash_agent/pyproject.toml" in names
    assert not any("__pycache__" in n for n in names)
    assert "nnflash-agent = nnflash_agent.cli:main" in entry
    assert "Requires-Dist: numpy" in meta and "Requires-Dist: psutil" in meta
    assert 'onnxruntime>=1.17; extra == "onnxruntime"' in meta and 'ai-edge-litert>=2.3; extra == "tflite"' in meta
    assert "torch" not in meta
    assert len(record.strip().splitlines()) == len(names)


def test_agent_wheel_installs_and_runs_without_host_code(tmp_path):
    """pip accepts the wheel; its console script starts from a venv that has no nnflash host code."""
    path, _ = build_agent_wheel(tmp_path / "w")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(tmp_path / "t"),
            str(path),
        ],
        check=True,
    )
    target = tmp_path / "t"
    assert (target / "nnflash_agent" / "cli.py").is_file() and not (target / "controller").exists()
    out = subprocess.run(
        [
            str(py),
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import nnflash_agent.cli as c; c.main(['--version'])",
            str(target),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert f"nnflash-agent {AGENT_VERSION}" in out.stdout + out.stderr


def test_platform_tags_follow_glibc():
    tags = pip_platform_tags("aarch64", "glibc", "2.36")
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert "manylinux2014_aarch64" in tags and "manylinux_2_37_aarch64" not in tags
    assert "linux_armv7l" in pip_platform_tags("armv7l", "glibc", "2.36")
    with pytest.raises(InstallError, match="glibc"):
        pip_platform_tags("aarch64", "musl", "1.2")
    with pytest.raises(InstallError, match="too old"):
        pip_platform_tags("aarch64", "glibc", "2.12")


def test_plan_for_raspberry_pi_os_64bit():
    plan = plan_install(PI_OS, ["onnxruntime", "tflite"], "ina219")
    assert plan.python_tag == "cp311" and plan.python_version == "3.11"
    assert plan.extras == ("onnxruntime", "tflite", "i2c")
    assert any(r.startswith("onnxruntime") for r in plan.requirements)
    assert any(r.startswith("ai-edge-litert") for r in plan.requirements)
    assert any(r.startswith("smbus2") for r in plan.requirements)
    assert plan.agent_requirement == f"nnflash-agent[onnxruntime,tflite,i2c]=={AGENT_VERSION}"


def test_32bit_arm_gets_a_clear_error_naming_what_works():
    arm32 = dict(PI_OS, machine="armv7l", bits=32, arch="armv7l")
    with pytest.raises(InstallError, match="onnxruntime publishes no wheels for 32-bit ARM.*--runtime tflite"):
        plan_install(arm32, ["onnxruntime"])
    plan = plan_install(arm32, ["tflite"])
    assert plan.extras == ("tflite-legacy",) and "tflite-runtime==2.14.0" in plan.requirements
    with pytest.raises(InstallError, match="Python <= 3.11"):
        plan_install(dict(arm32, python="3.13.5"), ["tflite"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arch": "riscv64", "machine": "riscv64"}, "unsupported architecture"),
        ({"python": "3.7.3"}, "3.9 or newer"),
        ({"system": "Darwin"}, "Linux"),
        ({"libc": "", "libc_version": ""}, "C library"),
    ],
)
def test_unsupported_platforms(change, message):
    with pytest.raises(InstallError, match=message):
        plan_install(dict(PI_OS, **change), ["onnxruntime"])


def test_unknown_meter_and_runtime():
    with pytest.raises(InstallError, match="--meter"):
        plan_install(PI_OS, ["onnxruntime"], "fluke")
    with pytest.raises(InstallError, match="--runtime"):
        plan_install(PI_OS, ["openvino"])


def test_prefix_resolution():
    assert resolve_prefix("~/.local/share/nnflash-agent", "/home/pi") == "/home/pi/.local/share/nnflash-agent"
    assert resolve_prefix("/opt/nnflash-agent/", "/home/pi") == "/opt/nnflash-agent"
    for bad in ("/", "~", "/opt", "relative/dir", "/home/pi/"):
        with pytest.raises(InstallError):
            resolve_prefix(bad, "/home/pi")


def test_selftest_json_reports_each_runtime(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "nnflash_agent.cli", "selftest", "--json"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    import json

    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(report["runtimes"]) == {"onnxruntime", "tflite"}
    assert report["passed"] is (out.returncode == 0)
    for entry in report["runtimes"].values():
        assert entry["status"] in ("ok", "not_installed") or entry["error"]
        if entry["status"] == "ok":
            assert entry["latency_ms_median"] > 0


def test_deploy_unit_is_the_one_the_installer_writes():
    from nnflash.controller.agent_install import render_unit

    deployed = (Path(__file__).resolve().parents[2] / "deploy" / "nnflash-agent@.service").read_text()
    assert deployed == render_unit("/home/%i/.local/share/nnflash-agent")
    unit = render_unit("/opt/nnflash-agent")
    assert "ExecStart=/opt/nnflash-agent/venv/bin/nnflash-agent serve --socket --prespawn" in unit
    assert "User=%i" in unit and "{venv}" not in unit
