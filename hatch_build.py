"""Compiles the prefix index's loops (picker/prefix/_native.c) when the package is installed.

Why a hook and not a setuptools extension: the project builds with hatchling, and one C file
needs only the interpreter's own compile-and-link command (sysconfig's LDSHARED, the one
CPython's extensions were built with). Where that fails (no compiler, no Python headers, a
platform without LDSHARED), the install goes on with a warning: picker/prefix/native.py then
runs the same loops in Python, with the same results.

An editable install (`make`) builds the module next to its source, where the checkout imports
it; a wheel gets it as a file of its own and a platform tag.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("picker/prefix/_native.c")


def compile_native(source: Path, output: Path) -> str | None:
    """Builds `output` from `source`; None when it worked, else why not (one line)."""
    link = sysconfig.get_config_var("LDSHARED")
    include = sysconfig.get_paths()["include"]
    if not link or not (Path(include) / "Python.h").exists():
        return f"no C build for this interpreter (LDSHARED {link!r}, Python.h in {include})"
    # The interpreter's own flags (-DNDEBUG, -fwrapv, its optimisation), as its extensions get.
    flags = shlex.split(sysconfig.get_config_var("CFLAGS") or "")
    command = [*shlex.split(link), *flags, "-fPIC", f"-I{include}", str(source), "-o",
               str(output)]
    output.unlink(missing_ok=True)  # a failed build must not leave an older module in use
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command[0]}: {exc}"
    if done.returncode != 0:
        return f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}"
    return None


class NativeLoops(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"
    _built: Path | None = None  # a wheel's module, outside the source tree until it is packed

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        name = f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
        source = Path(self.root) / SOURCE
        if version == "editable":
            output = source.with_name(name)
        else:
            self._built = Path(tempfile.mkdtemp(prefix="llm-picker-native-"))
            output = self._built / name
        failure = compile_native(source, output)
        if failure is not None:
            print(f"llm-picker: the prefix index's loops run in Python ({failure})",
                  file=sys.stderr)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(output)] = str(SOURCE.with_name(name))

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._built is not None:
            shutil.rmtree(self._built, ignore_errors=True)
