"""Every command of the README's bash blocks runs, in the order written, in a fresh copy of the repository.

The copy holds the tracked files only (what a clone has) with ``../shared`` beside it, as a clone next to the
shared datasets has. Changes to the commands, and only these: the installed binaries are on PATH instead of
``source .venv/bin/activate``; each ``--port=8500``-like port becomes a free port and servers bind
127.0.0.1 (several developers run this on one machine); ``make`` targets (``make test`` would run this
test), docker and kubectl (the production deployment) are left out; the MovieLens commands are left out
when ``../shared/datasets/movielens-100k`` is absent. Background commands (``&``) are waited for until
their model is AVAILABLE and stopped at the end.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import free_port, stop_server, wait_until_serving

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
BIN = os.path.dirname(sys.executable)
SKIPPED_PROGRAMS = ("make", "source", "docker", "kubectl")
COMMAND_TIMEOUT_S = 1800


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", open(os.path.join(REPO, "README.md")).read(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(line)
    return commands


def fresh_copy(root) -> str:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    clone = os.path.join(root, "tfrecsys")
    for path in filter(None, tracked.decode().split("\0")):
        if os.path.isfile(os.path.join(REPO, path)):
            os.makedirs(os.path.dirname(os.path.join(clone, path)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, path), os.path.join(clone, path))
    shared = os.path.join(REPO, os.pardir, "shared")
    if os.path.isdir(shared):
        os.symlink(os.path.abspath(shared), os.path.join(root, "shared"))
    return clone


def test_readme_lists_the_commands_of_the_main_path():
    programs = [shlex.split(c, comments=True)[0] for c in readme_commands()]
    for program in ("tfrecsys-simulate", "tfrecsys-train", "tfrecsys-export", "tfrecsys-serve", "tfrecsys-query",
                    "tfrecsys-score", "tfrecsys-preprocess", "tfrecsys-launch"):
        assert program in programs
    assert not any("users/*.parquet" in c for c in readme_commands()), "no command may read a file nothing writes"


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
def test_every_readme_command_runs_in_order_from_a_fresh_clone(tmp_path):
    clone = fresh_copy(str(tmp_path))
    has_movielens = os.path.isdir(os.path.join(clone, os.pardir, "shared", "datasets", "movielens-100k"))
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"])
    ports: dict[str, str] = {}
    servers, ran = [], []
    try:
        for line in readme_commands():
            background = line.rstrip().endswith("&")
            words = shlex.split(line.rstrip().rstrip("&"), comments=True)
            if any(word in SKIPPED_PROGRAMS for word in words[:2]):
                continue
            if "movielens" in line and not has_movielens:
                continue
            for i, word in enumerate(words):
                for port in re.findall(r"(?:--port=|127\.0\.0\.1:)(\d+)", word):
                    ports.setdefault(port, str(free_port()))
                    words[i] = word.replace(port, ports[port])
            if background:
                assert words[0] == "tfrecsys-serve", f"only servers run in the background: {line}"
                log = os.path.join(str(tmp_path), f"serve-{len(servers)}.log")
                with open(log, "wb") as out:
                    process = subprocess.Popen(words + ["--bind_address=127.0.0.1"], cwd=clone, env=env, stdout=out,
                                               stderr=subprocess.STDOUT)
                servers.append(process)
                port = next(w.split("=")[1] for w in words if w.startswith("--port="))
                model = next(w.split("=")[1] for w in words if w.startswith("--model_name="))
                wait_until_serving(process, f"127.0.0.1:{port}", model, log)
            else:
                result = subprocess.run(words, cwd=clone, env=env, capture_output=True, text=True,
                                        timeout=COMMAND_TIMEOUT_S)
                assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            ran.append(words[0])
    finally:
        for process in servers:
            stop_server(process)
    assert ran.count("tfrecsys-serve") == 2 and "tfrecsys-launch" in ran and "tfrecsys-query" in ran
