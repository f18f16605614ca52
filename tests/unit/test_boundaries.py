"""The package's shape, checked on its source with ``ast`` (ARCHITECTURE.md):

* each outside library is imported by one module only (its home), and the process
  environment is read in ``iipy/settings.py`` only;
* imports go down the layers: ``server`` and ``imaging`` know nothing of the protocols
  or the viewer, the protocols nothing of the transport or the viewer, and the
  top-level ``settings``, ``errors`` and ``cache`` nothing of any layer.

The checker itself is tested on planted violations, so that it cannot pass by
checking nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "iipy"

#: Outside library (first dotted component, or a full module name) -> the only modules
#: that may import it (paths relative to the package).
LIBRARY_HOMES = {
    "flup": {"server/fcgi.py"},
    "astropy": {"imaging/sources/fits.py"},
    "PIL": {"imaging/encode.py"},
    "simplejpeg": {"imaging/encode.py"},
    "pymemcache": {"cache.py"},
    "tifffile": {"imaging/sources/tiff.py"},
    "imagecodecs": {"imaging/sources/tiff.py"},
    "iipy._kernels": {"imaging/kernels.py"},
    "iipy._fcgi": {"server/fcgi.py"},
    "xstatic": {"viewer/assets.py"},
}

#: The compiled extensions: placed by LIBRARY_HOMES, not by layer.
_EXTENSIONS = {"._kernels", "._fcgi"}

#: Layer of a module -> the layers it may import from.
LAYERS = {
    "base": {"base"},                    # settings.py, errors.py, cache.py, __init__.py
    "server": {"base", "server"},
    "imaging": {"base", "imaging"},
    "protocols": {"base", "imaging", "protocols"},
    "viewer": {"base", "imaging", "protocols", "server", "viewer"},
    "entry": {"base", "imaging", "protocols", "server", "viewer", "entry"},  # cli, __main__
}
ENTRY_POINTS = {"cli", "__main__"}
#: Lazy re-exports: (module, imported module) pairs allowed across the layers when the
#: import is inside a function, never at module level, so that importing the module
#: stays cheap: ``iipy.show`` for notebooks.
LAZY_EXPORTS = {("__init__.py", "iipy.viewer.notebook")}


def layer_of(module: str) -> str:
    """``iipy.imaging.kernels`` -> ``imaging``; ``iipy.cli`` -> ``entry``."""
    parts = module.split(".")
    if len(parts) < 2:
        return "base"
    if parts[1] in ENTRY_POINTS:
        return "entry"
    if parts[1] in ("server", "imaging", "protocols", "viewer"):
        return parts[1]
    return "base"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import, at any depth of the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from iipy import cache`` imports the module iipy.cache
            found += [(node.lineno, target + "." + alias.name) for alias in node.names
                      if target == "iipy"]
    return found


def reads_environment(tree: ast.AST) -> list[int]:
    """Lines that touch ``os.environ`` or call ``os.getenv``/``os.putenv``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id == "os" and node.attr in ("environ", "getenv", "putenv", "environb"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and \
                any(a.name in ("environ", "getenv", "environb") for a in node.names):
            lines.append(node.lineno)
    return lines


def lines_in_functions(tree: ast.AST) -> set[int]:
    """Line numbers of the imports made inside a function."""
    return {node.lineno for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}


def violations(root: Path) -> list[str]:
    """Every broken rule in the package at ``root``, one line each."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        module = module_name(path, root)
        tree = ast.parse(path.read_text("utf-8"), str(path))
        mine = layer_of(module)
        lazy = lines_in_functions(tree)
        for line, target in imported_modules(tree, module, path.name == "__init__.py"):
            if line in lazy and (rel, target) in LAZY_EXPORTS:
                continue
            for lib, homes in LIBRARY_HOMES.items():
                if (target == lib or target.startswith(lib + ".")) and rel not in homes:
                    out.append(f"{rel}:{line}: imports {target}, whose home is "
                               f"{' or '.join(sorted(homes))}")
            if (target.startswith(root.name + ".")
                    and target.removeprefix(root.name) not in _EXTENSIONS):
                theirs = layer_of(target)
                if theirs not in LAYERS[mine]:
                    out.append(f"{rel}:{line}: the {mine} layer imports {target} "
                               f"(layer {theirs})")
        if rel != "settings.py":
            out += [f"{rel}:{line}: reads the environment (only settings.py may)"
                    for line in reads_environment(tree)]
    return out


def test_the_package_keeps_its_boundaries() -> None:
    assert violations(PACKAGE) == []


def test_every_module_is_in_a_known_place() -> None:
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    assert top == {"__init__.py", "__main__.py", "cache.py", "cli.py", "errors.py",
                   "settings.py"}
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert packages == {"imaging", "protocols", "server", "viewer"}


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "iipy"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_planted_violations_are_found(tmp_path: Path) -> None:
    root = _plant(tmp_path, {
        "__init__.py": "",
        "settings.py": "import os\nX = os.environ\n",
        "imaging/__init__.py": "",
        "imaging/render.py": "from PIL import Image\nfrom iipy.protocols import http\n",
        "imaging/kernels.py": "from .. import _kernels\nfrom ..protocols.iip import parser\n",
        "protocols/__init__.py": "",
        "protocols/http.py": "import astropy.io.fits\nfrom iipy.server import fcgi\n",
        "server/__init__.py": "",
        "server/fcgi.py": "import flup\nfrom iipy import viewer\n",
        "viewer/__init__.py": "",
        "viewer/page.py": "import os\nD = os.getenv('DISPLAY')\nfrom iipy.imaging import encode\n",
        "cache.py": "from iipy.imaging import store\n",
    })
    found = violations(root)
    expected = [
        "cache.py:1: the base layer imports iipy.imaging (layer imaging)",
        "imaging/kernels.py:2: the imaging layer imports iipy.protocols.iip (layer protocols)",
        "imaging/render.py:1: imports PIL, whose home is imaging/encode.py",
        "imaging/render.py:2: the imaging layer imports iipy.protocols (layer protocols)",
        "protocols/http.py:1: imports astropy.io.fits, whose home is imaging/sources/fits.py",
        "protocols/http.py:2: the protocols layer imports iipy.server (layer server)",
        "server/fcgi.py:2: the server layer imports iipy.viewer (layer viewer)",
        "viewer/page.py:2: reads the environment (only settings.py may)",
    ]
    assert sorted(found) == sorted(expected)


def test_lazy_exports_only_inside_functions(tmp_path: Path) -> None:
    root = _plant(tmp_path, {
        "__init__.py": "def __getattr__(name):\n    from iipy.viewer.notebook import show\n"
                       "    return show\n",
        "viewer/__init__.py": "",
        "viewer/notebook.py": "",
        "settings.py": "from iipy.viewer import notebook\n",
    })
    assert violations(root) == ["settings.py:1: the base layer imports iipy.viewer (layer viewer)"]
    (root / "__init__.py").write_text("from iipy.viewer.notebook import show\n")
    (root / "settings.py").write_text("")
    assert violations(root) == [
        "__init__.py:1: the base layer imports iipy.viewer.notebook (layer viewer)"]
