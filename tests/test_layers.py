"""The package's layers import downward only: core -> engine -> apps (docs/ARCHITECTURE.md), and no
module of the core or the engine imports edvae inside a function (which would hide a cycle)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "edvae"
ENGINE = {"engine"}
APPS = {"cli", "__main__", "train", "compare", "prior", "fid", "fd_classifier", "collapse_study",
        "collapse_plots", "tokenize", "bench", "progress", "study_file", "study_report", "study_generation",
        "study_run", "demo_summary"}


def layer(module: str) -> int:
    """0 core, 1 engine, 2 apps, from the module's dotted name below edvae."""
    top = module.split(".")[0]
    return 2 if top in APPS else 1 if top in ENGINE else 0


def dotted(path: Path) -> str:
    """src/edvae/engine/loop.py -> engine.loop; a package's __init__.py -> the package."""
    return path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")


def edvae_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module below edvae, whether the import is inside a function) for each import."""
    name = dotted(path)
    package = name.split(".")[:-1] if not path.name == "__init__.py" else name.split(".")
    out = []
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
                names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names]
            elif (node.module or "").startswith("edvae"):
                names = [node.module.removeprefix("edvae").strip(".")]
            else:
                continue
            out += [(n.strip("."), id(node) in local) for n in names if n.strip(".")]
        elif isinstance(node, ast.Import):
            out += [(a.name.removeprefix("edvae.").strip("."), id(node) in local) for a in node.names
                    if a.name.startswith("edvae.")]
    return out


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield dotted(path), path


def test_layers_import_downward_only():
    upward = [f"{name} ({layer(name)}) imports {target} ({layer(target)})"
              for name, path in modules() for target, _ in edvae_imports(path) if layer(target) > layer(name)]
    assert not upward, "\n".join(upward)


def test_core_and_engine_import_nothing_of_edvae_inside_functions():
    hidden = [f"{name} imports {target} inside a function" for name, path in modules() if layer(name) < 2
              for target, inside in edvae_imports(path) if inside]
    assert not hidden, "\n".join(hidden)


def test_the_layer_map_sees_every_module():
    names = {name.split(".")[0] for name, _ in modules()}
    assert APPS <= names and ENGINE <= names
    assert {"quantizers", "nets", "data", "model", "config", "checkpoint"} <= names  # the core
