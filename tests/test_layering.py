"""The layering of docs/architecture.md, enforced: imports point only downward.

    feedback            the store: no torch, no FastAPI, nothing of bot/ or trainer/
    bot.runtime         the model runtime: no FastAPI, never the web app, the CLI or the trainer
    bot.server,         the web app and the command line: reach the runtime only through
    bot.cli, bot.commands `bot.runtime.interface` (behaviour) and `bot.runtime.types` (plain data)
    trainer             imports feedback, and of bot/ only `bot.runtime.base_model` (base-model provisioning)

The runtime's modules import each other without a cycle (lazy imports inside functions included), and
`bot.runtime.types` imports none of them. The model's worker process loads neither SQLAlchemy nor FastAPI.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB = ("fastapi", "starlette", "uvicorn")
RUNTIME_INTERFACE = ("bot.runtime.interface", "bot.runtime.types")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(package: str):
    """(module, line, imported name, lazy) for every absolute import in `package`'s files."""
    folder = ROOT / package.replace(".", "/")
    for path in folder.rglob("*.py") if folder.is_dir() else [folder.with_suffix(".py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                yield _module(path), node.lineno, name, node.col_offset > 0


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(package: str, banned, allowed=lambda module, name, lazy: False) -> list[str]:
    return [
        f"{module}:{line} imports {name}"
        for module, line, name, lazy in _imports(package)
        if _under(name, *banned) and not allowed(module, name, lazy)
    ]


def test_the_store_imports_nothing_above_it():
    banned = ("bot", "trainer", "torch", "transformers", "peft", "trl", *WEB)
    assert _violations("feedback", banned) == []


def test_the_runtime_never_imports_the_web_app_the_cli_or_the_trainer():
    assert _violations("bot.runtime", ("bot.server", "bot.cli", "bot.commands", "trainer", "trl", *WEB)) == []


def test_the_web_app_reaches_the_runtime_only_through_its_interface():
    banned = ("bot.runtime", "trainer", "trl")
    # the CLI's `train` command (in bot/cli.py) imports the trainer lazily, inside the command
    train_command = lambda module, name, lazy: module == "bot.cli" and lazy and _under(name, "trainer")  # noqa: E731
    for package in ("bot.server", "bot.commands", "bot.cli"):
        violations = _violations(package, banned, train_command)
        assert [v for v in violations if not v.endswith(RUNTIME_INTERFACE)] == []


def test_the_trainer_imports_only_base_model_provisioning_from_bot():
    allowed = lambda _module, name, _lazy: name == "bot.runtime.base_model"  # noqa: E731
    assert _violations("trainer", ("bot", *WEB), allowed) == []


def test_the_runtime_modules_import_each_other_without_a_cycle():
    graph: dict[str, set[str]] = {}
    for module, _line, name, _lazy in _imports("bot.runtime"):
        graph.setdefault(module, set())
        if _under(name, "bot.runtime") and name != module:
            graph[module].add(name)
    assert graph["bot.runtime.types"] == set()  # the shared value types import no sibling
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle in bot.runtime: {' → '.join(exc.args[1])}") from None


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_server_process_never_loads_trainer_or_trl():
    loaded = _loaded_after("import bot.server.app, bot.cli")
    assert not {m for m in loaded if m.split(".")[0] in ("trainer", "trl")}


def test_trainer_never_loads_the_server():
    loaded = _loaded_after("import trainer.round")
    assert not {m for m in loaded if m.split(".")[0] in WEB}
    assert {m for m in loaded if _under(m, "bot")} <= {
        "bot",
        "bot.runtime",
        "bot.runtime.base_model",
        "bot.runtime.types",
    }


def test_the_model_worker_process_loads_no_database_or_web_code():
    loaded = _loaded_after("import bot.runtime.workers")
    assert not {m for m in loaded if m.split(".")[0] in ("sqlalchemy", "sqlmodel", "alembic", *WEB)}


def test_cli_help_is_fast_and_light():
    loaded = _loaded_after("import bot.cli")
    assert "torch" not in loaded and "fastapi" not in loaded
