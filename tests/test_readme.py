"""The README's curl walk-through, run against a real `carechart serve` so it cannot rot."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _commands() -> list[str]:
    """The shell block under "Try it", joined across line continuations, comments dropped."""
    text = README.read_text()
    section = text.split("## Try it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#[^'\"]*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


@dataclass(frozen=True)
class Server:
    base: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARECHART_")}
    env["CARECHART_DATA_DIR"] = str(data_dir)
    carechart = Path(sys.executable).parent / "carechart"
    process = subprocess.Popen(
        [str(carechart), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(  # noqa: B904 (the cause is the exit, not the OSError)
                    process.stderr.read().decode() if process.stderr else "serve exited"
                )
            time.sleep(0.2)
    try:
        yield Server(base, env)
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stderr is not None:
            process.stderr.close()
    key_file = data_dir / "keys" / "master.key"
    assert key_file.exists()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_readme_walkthrough_runs(server: Server, tmp_path: Path) -> None:
    """Each command runs in its own shell, as a reader pasting them would; exported variables
    carry over (the state file), and the CLI sees the server's data directory."""
    commands = _commands()
    assert any("If-None-Exist" in c for c in commands)
    port = server.base.rsplit(":", 1)[1]
    state = tmp_path / "state.sh"
    state.write_text("")
    env = {**server.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    patient_id: str | None = None
    for command in commands:
        command = command.replace("localhost:8000", f"localhost:{port}")
        if patient_id:
            command = re.sub(r"\bID\b", patient_id, command)
        assignment = re.match(r"export (\w+)=", command)
        if assignment is None:
            command = command.replace("curl -s", "curl -s -w '\\nHTTP %{http_code}\\n'", 1)
        script = f"source {state}\n{command}\nexport -p > {state}\n"
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = result.stdout
        if assignment is not None:
            name = assignment.group(1)
            value = re.search(rf"^declare -x {name}=\"(.*)\"$", state.read_text(), re.M)
            assert value is not None, f"{command}\n{result.stderr}"
            assert value.group(1) not in ("", "null"), f"{command}\n{result.stderr}"
            continue
        if "| head" in command:
            assert output.strip(), command
            continue
        status = int(re.findall(r"HTTP (\d{3})", output)[-1])
        assert status < 400, f"{command}\n{output[-2000:]}"
        if patient_id is None and "-X POST" in command and "/fhir/Patient" in command:
            location = re.search(r"(?i)location: \S+/fhir/Patient/([^/\s]+)/_history/1", output)
            assert location, output
            patient_id = location.group(1)
        if "_history" in command and patient_id:
            body = json.loads(output.rsplit("\nHTTP", 1)[0])
            assert body["type"] == "history"
    assert patient_id is not None
