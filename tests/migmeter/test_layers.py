"""The import rule, read from the source with ``ast`` (module level and inside functions).

Layers, bottom to top: kernel < collector < processor < warehouse < shell.

1. A module imports its own layer or layers below it, never one above.
2. The kernel (``migmeter``'s errors, settings, kafka_security, preflight, cli_support) imports
   no other layer at all.
3. Between the three rooms only their contracts cross: the processor may import the wire contract
   (``collector.snapshot``); the warehouse may import it, the MIG profile table
   (``collector.profiles``) and the processor's facts about what it writes (``processor.grains``).
4. Nothing imports the shell (``migmeter``'s cli, demo, db_cli, stack_cli, stack); the shell
   imports anything.

Each violation is listed as ``module -> imported (layer a imports layer b)``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("migmeter", "collector", "processor", "warehouse")
ORDER = ("kernel", "collector", "processor", "warehouse", "shell")
KERNEL = {"migmeter", "migmeter.errors", "migmeter.settings", "migmeter.kafka_security", "migmeter.preflight",
          "migmeter.cli_support"}
# Rule 3: (importing layer, imported layer) -> the modules allowed to cross.
CONTRACTS: dict[tuple[str, str], frozenset[str]] = {
    ("processor", "collector"): frozenset({"collector.snapshot"}),
    ("warehouse", "collector"): frozenset({"collector.snapshot", "collector.profiles"}),
    ("warehouse", "processor"): frozenset({"processor.grains"}),
}


def layer(module: str) -> str:
    top = module.split(".")[0]
    if top != "migmeter":
        return top
    return "kernel" if module in KERNEL else "shell"


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``module`` imports of ours, wherever the import statement stands; a
    ``from package import name`` counts as the submodule when ``name`` is one. Calls of
    ``importlib.import_module("literal")`` count too."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {name for name in found if name.split(".")[0] in {k.split(".")[0] for k in known}}


def violations(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    known = modules(root, packages)
    out = []
    for module, path in known.items():
        a = layer(module)
        for target in sorted(imports(module, path, set(known))):
            b = layer(target)
            if a == b:
                continue
            upward = ORDER.index(b) > ORDER.index(a)
            crossing = a != "shell" and b != "kernel" and target not in CONTRACTS.get((a, b), frozenset())
            if upward or crossing:
                out.append(f"{module} -> {target} (layer {a} imports layer {b})")
    return out


def test_no_module_imports_upward_or_past_a_contract() -> None:
    found = violations(ROOT)
    assert found == [], "layer violations:\n" + "\n".join(found)


def test_the_shell_reaches_every_room_with_plain_imports() -> None:
    # The CLI table used to load its commands from name strings: invisible to this test.
    known = modules(ROOT)
    targets = imports("migmeter.cli", known["migmeter.cli"], set(known))
    assert {"collector.cli", "processor.cli", "warehouse.report_cli", "migmeter.demo"} <= targets


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


@pytest.mark.parametrize(("files", "expected"), [
    # An upward import inside a function is found (rule 1).
    ({"collector/run.py": "def f():\n    from processor import fold\n", "processor/fold.py": ""},
     ["collector.run -> processor.fold (layer collector imports layer processor)"]),
    # The kernel imports a room (rule 2), through importlib with a literal name.
    ({"migmeter/settings.py": "import importlib\nimportlib.import_module('warehouse.reports')\n",
      "warehouse/reports.py": ""},
     ["migmeter.settings -> warehouse.reports (layer kernel imports layer warehouse)"]),
    # A room imports the shell (rule 4), relatively.
    ({"migmeter/errors.py": "from . import demo\n", "migmeter/demo.py": ""},
     ["migmeter.errors -> migmeter.demo (layer kernel imports layer shell)"]),
    # Downward, but past the contract (rule 3); the contract itself is fine.
    ({"processor/sink.py": "from collector.snapshot import Snapshot\nfrom collector import spool\n",
      "collector/snapshot.py": "", "collector/spool.py": ""},
     ["processor.sink -> collector.spool (layer processor imports layer collector)"]),
    # The shell imports anything.
    ({"migmeter/cli.py": "import collector.cli\nfrom warehouse import reports\n", "collector/cli.py": "",
      "warehouse/reports.py": ""}, []),
])
def test_each_rule_is_enforced_on_a_made_up_tree(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    assert violations(_tree(tmp_path, files)) == expected
