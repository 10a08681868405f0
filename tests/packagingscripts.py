"""The scripts of packaging/ as modules, for the tests.

packaging/ is not a package (PyPI's ``packaging`` owns that name, and ``make`` runs the
scripts by path), so a script is loaded from its file, once, and registered under its own name:
its dataclasses look their module up by name, and the scripts import each other by it
(``import build``, ``import debroot``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGING = Path(__file__).resolve().parents[1] / "packaging"


def load(name: str) -> ModuleType:
    """``packaging/<name>.py``, loaded once."""
    path = PACKAGING / f"{name}.py"
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "") == path:
        return loaded
    if str(PACKAGING) not in sys.path:
        sys.path.insert(0, str(PACKAGING))  # for the scripts' own `import build`
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
