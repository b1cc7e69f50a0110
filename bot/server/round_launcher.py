"""How the admin API starts a training round: `round_launcher(settings)` gives `launch(run_id, methods)`,
which runs `supportloop train --run-id N` (`bot.commands.rounds`) as a process of its own, so a crash or the
CPU load of training never reaches the server and the server never imports the trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def round_launcher(settings):
    """`launch(run_id, methods)`: start `supportloop train --run-id` with the server's settings as its own
    process (own session: it outlives a server restart; its output goes to the run's log in the store)."""
    env = {**os.environ, **settings.as_env()}

    def launch(run_id: int, methods: str = "auto") -> subprocess.Popen:
        command = [sys.executable, "-m", "bot.cli", "train", "--run-id", str(run_id), "--quiet", "--methods", methods]
        logs = Path(settings.data_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"round-{run_id}.log", "ab") as out:
            return subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )

    return launch
