"""Imports point only downward (see ARCHITECTURE.md): feedback ← bot, trainer; the server never loads
the trainer or TRL; the trainer never loads FastAPI or the server."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BANNED = {
    "feedback": {"bot", "trainer", "torch", "transformers", "peft", "trl", "fastapi", "starlette"},
    "bot": {"trainer", "trl"},
    "trainer": {"bot.app", "bot.routes", "bot.chat", "bot.deps", "fastapi", "starlette"},
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield node, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, [node.module]


def test_imports_point_downward():
    violations = []
    for package, banned in BANNED.items():
        for path in (ROOT / package).rglob("*.py"):
            for node, names in _imports(path):
                lazy_cli = path == ROOT / "bot" / "cli.py" and node.col_offset > 0
                for name in names:
                    hit = [b for b in banned if name == b or name.startswith(b + ".")]
                    if hit and not (lazy_cli and name.startswith("trainer")):
                        violations.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert violations == []


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_server_process_never_loads_trainer_or_trl():
    loaded = _loaded_after("import bot.app, bot.cli")
    assert not {m for m in loaded if m.split(".")[0] in ("trainer", "trl")}


def test_trainer_never_loads_the_server():
    loaded = _loaded_after("import trainer.round")
    assert not {m for m in loaded if m.split(".")[0] in ("fastapi", "starlette", "uvicorn")}
    assert not {m for m in loaded if m.startswith("bot.") and m != "bot.basemodel"}


def test_cli_help_is_fast_and_light():
    loaded = _loaded_after("import bot.cli")
    assert "torch" not in loaded and "fastapi" not in loaded
