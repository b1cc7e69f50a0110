"""docker/ without a Docker daemon (this project's machines have the CLI only): one install script for the
README's commands and the images, a compose file that holds together, and the images' install and entry
point run for real in a fresh virtual environment (see docker/README.md, "What was checked where")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from bot.cli import build_parser
from bot.server.settings import Settings
from tests.support.common import ROOT, wait_until
from tests.support.services import free_port

DOCKER = ROOT / "docker"
SERVICES = {"db", "bot", "scheduler", "bot2", "proxy"}


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())  # anchors and `<<` merges resolved


def _installs(text: str, command: str) -> list[str]:
    """The commands (Makefile recipe lines: a tab first; Dockerfile: `RUN`) that install Python packages."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.startswith(command) and re.search(r"pip install|install\.sh", line)
    ]


def test_the_readme_s_commands_and_the_images_install_with_one_script():
    make = _installs((ROOT / "Makefile").read_text(), "\t")
    docker = _installs((DOCKER / "Dockerfile").read_text(), "RUN")
    assert make == ['PYTHON=$(PYTHON) sh docker/install.sh $(VENV) -e ".[test]"']
    assert docker == [
        'RUN TORCH_INDEX_URL="${TORCH_INDEX_URL}" SUPPORTLOOP_TORCH="${SUPPORTLOOP_TORCH}" sh docker/install.sh /opt/venv .'
    ]
    assert "torch==2.13.0" in (DOCKER / "install.sh").read_text()  # the pin lives in the script only
    assert "torch==" not in (ROOT / "Makefile").read_text()


def test_compose_has_the_services_their_health_checks_volumes_and_order():
    compose = _compose()
    services = compose["services"]
    assert set(services) == SERVICES
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert "pgdata:/var/lib/postgresql/data" in services["db"]["volumes"]
    for name in ("bot", "bot2"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
    for name in ("bot", "bot2", "scheduler"):
        service = services[name]
        assert service["depends_on"]["db"] == {"condition": "service_healthy"}
        assert "registry:/data" in service["volumes"]  # one adapter registry for every bot and the rounds
        assert service["environment"]["SUPPORTLOOP_DATA_DIR"] == "/data"
    assert services["bot2"]["profiles"] == services["proxy"]["profiles"] == ["replicas"]
    assert set(compose["volumes"]) == {"pgdata", "registry"}
    targets = {s["build"]["target"] for s in services.values() if "build" in s}
    stages = set(re.findall(r"^FROM \S+ AS (\w+)", (DOCKER / "Dockerfile").read_text(), re.M))
    assert targets == {"serve", "trainer"} <= stages


def test_compose_sets_only_real_settings_and_the_store_is_the_db_service():
    services = _compose()["services"]
    settings = {f"SUPPORTLOOP_{name.upper()}" for name in Settings.model_fields}
    for name in ("bot", "bot2", "scheduler"):
        env = services[name]["environment"]
        assert {k for k in env if k.startswith("SUPPORTLOOP_")} <= settings
        Settings.model_validate(  # every value parses as its setting
            {k.removeprefix("SUPPORTLOOP_").lower(): _value(v) for k, v in env.items() if k.startswith("SUPPORTLOOP_")}
        )
    db = services["db"]["environment"]
    url = services["bot"]["environment"]["SUPPORTLOOP_DATABASE_URL"]
    assert url == f"postgresql+psycopg://{db['POSTGRES_USER']}:{db['POSTGRES_PASSWORD']}@db:5432/{db['POSTGRES_DB']}"


def _value(raw: str):
    return json.loads(raw) if raw.startswith("[") else raw


def test_the_proxy_sends_both_replicas_and_is_the_only_address_trusted_for_forwarded_headers():
    services = _compose()["services"]
    caddy = (DOCKER / "Caddyfile").read_text()
    assert "reverse_proxy bot:8000 bot2:8000" in caddy and "health_uri /readyz" in caddy
    proxy_address = services["proxy"]["networks"]["default"]["ipv4_address"]
    assert {services[n]["environment"]["FORWARDED_ALLOW_IPS"] for n in ("bot", "bot2")} == {proxy_address}


def test_the_commands_the_images_run_are_real_commands():
    parser = build_parser()
    dockerfile = (DOCKER / "Dockerfile").read_text()
    cmds = [json.loads(c) for c in re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)]
    assert len(cmds) == 2
    for argv in [*cmds, _compose()["services"]["scheduler"]["command"]]:
        args = parser.parse_args(argv)  # exits (fails the test) on an unknown option
        assert args.func is not None
    assert "USER supportloop" in dockerfile and "HEALTHCHECK" in dockerfile


@pytest.mark.integration
def test_the_images_install_and_entry_point_serve_from_a_fresh_environment(tmp_path):
    """docker/install.sh into a new virtual environment with a plain (non-editable) install, as the image
    does, then docker/entrypoint.sh with no arguments: it serves the widget and answers a question."""
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    installed = subprocess.run(["sh", str(DOCKER / "install.sh"), str(venv), str(ROOT)], env=env,
                               capture_output=True, text=True, timeout=900)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    port = free_port()
    entry = tmp_path / "entrypoint.sh"  # the same script, serving on a free port instead of 8000
    entry.write_text((DOCKER / "entrypoint.sh").read_text().replace("--port 8000", f"--port {port}"))
    run_env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "SUPPORTLOOP_DATA_DIR": str(tmp_path / "data"),
    }
    run_env.pop("VIRTUAL_ENV", None)
    server = subprocess.Popen(["sh", str(entry)], env=run_env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), timeout=300, interval=1)
        assert "<script" in httpx.get(f"{url}/").text and httpx.get(f"{url}/widget.js").status_code == 200
        reply = httpx.post(f"{url}/api/chat", json={"message": "Hello, what can you do?"}, timeout=120)
        assert reply.status_code == 200 and reply.json()["reply"].strip(), reply.text
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    assert "0.0.0.0" in output and "Traceback" not in output, output[-3000:]
    assert shutil.which("supportloop", path=str(venv / "bin"))


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.5)
        return False
