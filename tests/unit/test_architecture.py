"""The README's Architecture block names every module of the core and the adapters, and only
modules that exist: a module added, moved or removed without the README saying so fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("picker", "extproc", "authz", "litellm_plugin", "llm_picker")
# Continuation lines of a description are indented past any entry's depth.
_MAX_ENTRY_INDENT = 8


def listed_modules() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Architecture\n", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block is not None, "README's Architecture section has no ```text block"
    listed: set[str] = set()
    stack: list[str] = []
    for line in block.group(1).splitlines():
        indent = len(line) - len(line.lstrip(" "))
        name = line.split()[0] if line.strip() else ""
        if indent > _MAX_ENTRY_INDENT or not name.endswith(("/", ".py")):
            continue
        del stack[indent // 2:]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        else:
            listed.add("/".join([*stack, name]))
    return listed


def existing_modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if path.name == "__init__.py" or any(part.startswith("_") and part != "__main__.py"
                                                 for part in relative.parts):
                continue
            found.add(relative.as_posix())
    return found


def test_the_architecture_lists_every_module_and_no_other() -> None:
    listed, existing = listed_modules(), existing_modules()
    assert not existing - listed, f"modules missing from README's Architecture: " \
                                  f"{sorted(existing - listed)}"
    assert not listed - existing, f"README's Architecture names modules that do not exist: " \
                                  f"{sorted(listed - existing)}"


def test_it_says_there_are_three_adapters() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Architecture\n", 1)[1]
    assert "three adapters" in section.split("\n## ", 1)[0]
