"""vllm_server's process handling without vLLM: a stand-in server (real HTTP on 127.0.0.1) that forks a
child which ignores SIGTERM, like an engine process that hangs on shutdown."""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import pytest

from demo.vllm_server import VllmStartError, build_command, group_alive, vllm_server

STAND_IN = '''#!{python}
import http.server, os, signal, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
if os.fork() == 0:  # the "engine": ignores SIGTERM, must be SIGKILLed with the group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
print("stand-in serving", " ".join(sys.argv[1:]), flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def _stand_in(tmp_path: Path) -> Path:
    exe = tmp_path / "fake-python"
    exe.write_text(STAND_IN.format(python=sys.executable))
    exe.chmod(0o755)
    return exe


def test_ctrl_c_stops_the_whole_group_even_a_child_ignoring_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with pytest.raises(KeyboardInterrupt):
        with vllm_server(tmp_path, "m", loras={"a": tmp_path}, log=log, python=_stand_in(tmp_path),
                         stop_grace=1.0) as srv:
            pid = srv.pid
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/health", timeout=5) as r:
                assert r.status == 200
            assert srv.served_names == ["m", "a"]
            raise KeyboardInterrupt
    assert not group_alive(pid)
    text = log.read_text()
    assert "--enable-lora" in text and f"a={tmp_path.resolve()}" in text and "--enforce-eager" in text


def test_a_server_that_dies_fails_at_once_with_its_log(tmp_path: Path) -> None:
    exe = tmp_path / "dies"
    exe.write_text("#!/bin/sh\necho 'boom: no such model' >&2\nexit 3\n")
    exe.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(VllmStartError, match="exited with code 3(.|\n)*boom: no such model"):
        with vllm_server(tmp_path, "m", log=tmp_path / "dies.log", python=exe):
            pass
    assert time.monotonic() - started < 10


def test_command_has_the_measured_flags(tmp_path: Path) -> None:
    cmd = build_command(Path("py"), tmp_path, "base", 8000, {"billing": tmp_path}, tools=True)
    joined = " ".join(cmd)
    for flag in ("--host 127.0.0.1", "--max-model-len 1024", "--enforce-eager", "--kv-cache-memory-bytes 268435456",
                 "--enable-lora", "--max-lora-rank 8", "--tool-call-parser hermes", "--enable-auto-tool-choice"):
        assert flag in joined
