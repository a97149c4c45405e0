"""The layers import one way: cascade/ (the core) imports none of the layers built on it, and
importing the core needs neither Ray nor the evaluation pipelines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UPPER_LAYERS = {"services", "pipelines", "loadtest", "cli", "tests"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_core_imports_no_upper_layer() -> None:
    upward = {f"{path.relative_to(ROOT)} imports {module}"
              for path in sorted((ROOT / "cascade").rglob("*.py"))
              for module in imported_modules(path) if module.split(".")[0] in UPPER_LAYERS}
    assert not upward, sorted(upward)


def test_importing_the_core_loads_neither_ray_nor_the_pipelines() -> None:
    modules = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                     for p in (ROOT / "cascade").rglob("*.py")
                     if p.name != "__init__.py" and "engines" not in p.parts)
    script = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
              "print(sorted({n.split('.')[0] for n in sys.modules} & {'ray', 'pipelines', 'services', 'cli'}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stdout
