"""An N-member cluster of basalt or etcd 3.5.1 for fault tests, and the faults themselves.

Owns: member processes (started with etcd's cluster flags, killed, restarted on the same data
dir), the network they talk over (loopback, or one network namespace per member joined by a
bridge in a namespace of ours), link faults (partitions, loss, delay) and membership changes
through etcdctl. Must never touch the host's own interfaces, routes or firewall: every
namespace, link and rule it makes lives inside namespaces named `ctest-<pid>-*`, and `close()`
(also run at exit, and for namespaces left by dead test processes) removes them.

Network namespaces (`netns=True`):

    ns ctest-<pid>-r  (ours)          br0 10.77.0.254/24
                                        |  v1   |  v2   |  v3 ...   (veth pairs, bridge ports)
    ns ctest-<pid>-m1 eth0 10.77.0.1  --+       |       |
    ns ctest-<pid>-m2 eth0 10.77.0.2  ----------+       |
    ns ctest-<pid>-m3 eth0 10.77.0.3  ------------------+

Partitions and loss are nftables rules on the bridge's forward hook (member to member only;
the clients, which reach the members from 10.77.0.254, are never cut). Delay is an NFQUEUE on
each member's output, held back by `nfq_delay` (this kernel has no netem). The test process
reaches each member's client port through a relay on 127.0.0.1 (see `Relay`).
"""

import atexit
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2 as rpc  # noqa: E402
from etcd3.etcdrpc import rpc_pb2_grpc as rpc_grpc  # noqa: E402

import harness  # noqa: E402

HERE = Path(__file__).resolve().parent
SUBNET = "10.77.0"
CLIENT_SIDE_IP = f"{SUBNET}.254"
# Members are numbered from 1 and stay below 128, so this half holds them and not the clients.
MEMBERS_NET = f"{SUBNET}.0/25"
CLIENT_PORT, PEER_PORT = 2379, 2380
STATUS_TIMEOUT_S = 1.0
# A member that is up but not yet in a quorum can take a while on a loaded 2-core machine.
READY_TIMEOUT_S = 40.0
ETCDCTL_TIMEOUT_S = 30.0
# How long a member add waits for every member to apply it before starting the new member.
MEMBER_ADD_SPREAD_S = 5.0
NS_PREFIX = "ctest-"
CLONE_NEWNET = 0x40000000


def cluster_binary() -> str:
    """The server under test: basalt by default, etcd 3.5.1 with CLUSTER_BINARY=etcd."""
    return os.environ.get("CLUSTER_BINARY", "basalt")


def run(args, check=True, timeout=30.0, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout, **kw)


def netns_available() -> str:
    """Why namespaces can't be used here, or "" when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return ""


def sweep_stale_namespaces() -> None:
    """Remove namespaces left by test processes that died without cleaning up."""
    listing = run(["ip", "netns", "list"], check=False).stdout.split()
    for name in listing:
        if not name.startswith(NS_PREFIX):
            continue
        try:
            pid = int(name[len(NS_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            _delete_namespace(name)


def _delete_namespace(name: str) -> None:
    pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    run(["ip", "netns", "del", name], check=False)


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)


_ports_given = set()


def unused_port() -> int:
    """A free loopback port not handed out before by this process (two members asking at once
    must not both get the port the kernel just freed)."""
    while True:
        port = harness.free_port()
        if port not in _ports_given:
            _ports_given.add(port)
            return port


_libc = ctypes.CDLL(None, use_errno=True)


def socket_in_namespace(ns: str) -> socket.socket:
    """A TCP socket created inside network namespace `ns` (a socket keeps its namespace for life;
    the namespace switch happens on a throwaway thread, so no other thread ever moves)."""
    made = {}

    def make():
        with open(f"/var/run/netns/{ns}") as f:
            if _libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                made["error"] = OSError(ctypes.get_errno(), "setns")
                return
        made["socket"] = socket.socket()

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "error" in made:
        raise made["error"]
    return made["socket"]


class Relay:
    """127.0.0.1:<port> in our namespace → ip:port inside namespace `ns`, byte for byte.

    A connection the relay accepts is dialled onward once; if the far side refuses, the accepted
    connection is closed, as a refused connect would be.
    """

    BUFFER_BYTES_MAX = 256 * 1024

    def __init__(self, ns: str, ip: str, port: int):
        self.ns, self.target = ns, (ip, port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.open_sockets = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(conn,), daemon=True).start()

    def _connect(self, conn):
        far = socket_in_namespace(self.ns)
        far.settimeout(5)
        try:
            far.connect(self.target)
        except OSError:
            conn.close()
            far.close()
            return
        far.settimeout(None)
        for s in (conn, far):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self.open_sockets.update((conn, far))
        threading.Thread(target=self._pump, args=(conn, far), daemon=True).start()
        self._pump(far, conn)

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(self.BUFFER_BYTES_MAX)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.lock:
            self.open_sockets.discard(src)
        src.close()

    def close(self):
        self.closed = True
        self.listener.close()
        with self.lock:
            for s in list(self.open_sockets):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Member:
    """One member: its name, addresses, data dir and process."""

    def __init__(self, cluster: "Cluster", index: int):
        self.cluster, self.index = cluster, index
        self.name = f"m{index}"
        self.dir = cluster.dir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "server.log"
        self.process = None
        self.id = 0  # raft member id, learnt from the first Status answer or member add
        self.learner = False
        if cluster.netns:
            self.ns = f"{cluster.ns_prefix}-m{index}"
            self.ip = f"{SUBNET}.{index}"
            self.client_port, self.peer_port = CLIENT_PORT, PEER_PORT
        else:
            self.ns = None
            self.ip = "127.0.0.1"
            self.client_port, self.peer_port = unused_port(), unused_port()
        self.client_url = f"http://{self.ip}:{self.client_port}"
        self.peer_url = f"http://{self.ip}:{self.peer_port}"
        self.relay = None
        self._channel = None
        # --initial-cluster of this member's first start (what a manifest keeps passing).
        self.initial_cluster = ""

    def __repr__(self):
        return self.name

    @property
    def endpoint(self) -> str:
        """host:port the test process dials for this member's client port."""
        if self.relay:
            return f"127.0.0.1:{self.relay.port}"
        return f"{self.ip}:{self.client_port}"

    def channel(self) -> grpc.Channel:
        """A shared channel for the harness's own calls (workload clients open their own)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.endpoint)
        return self._channel

    def args(self, initial_cluster: str, state: str, token: str = None):
        c = self.cluster
        binary = harness.basalt_bin() if c.kind == "basalt" else harness.etcd_bin("etcd")
        args = [
            binary,
            "--name", self.name,
            "--data-dir", str(self.dir / "data"),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", token or c.token,
            "--heartbeat-interval", str(c.heartbeat_ms),
            "--election-timeout", str(c.election_ms),
            *c.extra_flags,
            *(c.member_flags(self) if c.member_flags else []),
        ]
        if c.kind == "basalt":
            args += ["--cores", "1"]
        if self.ns:
            args = ["ip", "netns", "exec", self.ns, *args]
        return args

    def start(self, initial_cluster: str = "", state: str = "new", token: str = None,
              wait_listening: bool = True) -> "Member":
        """Start the process; the flags are those of its first start unless given again (a
        member with a data dir ignores the initial-cluster flags, as etcd does). Without
        `wait_listening` it returns at once, for a caller that wants to see a start fail."""
        if initial_cluster:
            if not self.initial_cluster:
                self.initial_cluster = initial_cluster
            self.start_args = self.args(initial_cluster, state, token)
        log = open(self.log_path, "ab")
        log.write(f"==== start {time.strftime('%H:%M:%S')}: {' '.join(self.start_args)}\n".encode())
        log.flush()
        self.process = subprocess.Popen(self.start_args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if self.ns and self.relay is None:
            self.relay = Relay(self.cluster.router_ns, self.ip, self.client_port)
        if wait_listening:
            self._wait_listening()
        return self

    def _wait_listening(self):
        deadline = time.monotonic() + harness.START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.ns:
                    with socket_in_namespace(self.cluster.router_ns) as s:
                        s.settimeout(0.2)
                        s.connect((self.ip, self.client_port))
                else:
                    socket.create_connection((self.ip, self.client_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen within {harness.START_TIMEOUT_S}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9."""
        if self.alive():
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then kill -9 if it does not exit within 10 s."""
        harness.stop_process(self.process)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def status(self, timeout_s: float = STATUS_TIMEOUT_S):
        """Maintenance.Status, or None when the member does not answer."""
        if not self.alive():
            return None
        try:
            resp = rpc_grpc.MaintenanceStub(self.channel()).Status(rpc.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None
        self.id = resp.header.member_id
        return resp

    def hash_kv(self, revision: int):
        return rpc_grpc.MaintenanceStub(self.channel()).HashKV(
            rpc.HashKVRequest(revision=revision), timeout=10
        )

    def close_channel(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None


class Cluster:
    """N members of `kind` ("basalt" or "etcd"); `netns` puts each in a namespace of its own."""

    def __init__(self, kind: str = None, size: int = 3, netns: bool = False, heartbeat_ms: int = 100,
                 election_ms: int = 1000, extra_flags=(), base_dir=None, member_flags=None):
        """`member_flags(member)`, when given, adds flags of that member's own (e.g. its key file)."""
        self.kind = kind or cluster_binary()
        self.netns = netns
        self.heartbeat_ms, self.election_ms = heartbeat_ms, election_ms
        self.extra_flags = list(extra_flags)
        self.member_flags = member_flags
        self.dir = Path(tempfile.mkdtemp(prefix=f"cluster-{self.kind}-", dir=base_dir))
        self.token = f"ctest-{os.getpid()}-{random.randrange(1 << 30)}"
        self.ns_prefix = f"{NS_PREFIX}{os.getpid()}-{random.randrange(1 << 16):x}"
        self.router_ns = f"{self.ns_prefix}-r"
        self.namespaces = []
        self.next_index = 1
        # Link faults in force (netns only): partition groups, extra cut pairs, loss.
        self.partition_groups, self.cut_pairs, self.loss_percent = None, [], 0
        self.namespaced_members = []
        self.delay_procs = {}
        self.members = []
        self._size = size
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # A run stopped by SIGTERM (a CI timeout) unwinds, so members and namespaces go too.
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        if netns:
            why = netns_available()
            if why:
                raise RuntimeError(why)
            sweep_stale_namespaces()
            self._make_router()

    # ---- network -------------------------------------------------------------------------

    def _ns(self, ns, *args, check=True):
        return run(["ip", "netns", "exec", ns, *args], check=check)

    def _make_router(self):
        r = self.router_ns
        run(["ip", "netns", "add", r])
        self.namespaces.append(r)
        run(["ip", "-n", r, "link", "set", "lo", "up"])
        run(["ip", "-n", r, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", r, "addr", "add", f"{CLIENT_SIDE_IP}/24", "dev", "br0"])
        run(["ip", "-n", r, "link", "set", "br0", "up"])
        self._nft("add table bridge faults\n"
                  "add chain bridge faults links { type filter hook forward priority 0; policy accept; }\n")

    def _add_member_namespace(self, m: Member):
        r = self.router_ns
        run(["ip", "netns", "add", m.ns])
        self.namespaces.append(m.ns)
        run(["ip", "-n", m.ns, "link", "set", "lo", "up"])
        port = f"v{m.index}"
        run(["ip", "-n", r, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", m.ns])
        run(["ip", "-n", r, "link", "set", port, "master", "br0", "up"])
        run(["ip", "-n", m.ns, "addr", "add", f"{m.ip}/24", "dev", "eth0"])
        run(["ip", "-n", m.ns, "link", "set", "eth0", "up"])

    def _nft(self, script: str):
        run(["ip", "netns", "exec", self.router_ns, "nft", "-f", "-"], input=script)

    def _apply_link_faults(self):
        """Rewrite the bridge's forward chain from the faults in force. A partition is kept as
        its groups, so a member made later joins the unnamed group and is cut off too."""
        rules = []
        if self.partition_groups is not None:
            named = [m for g in self.partition_groups for m in g]
            rest = [m for m in self.namespaced_members if m not in named]
            groups = self.partition_groups + ([rest] if rest else [])
            pairs = [(a, b) for i, ga in enumerate(groups) for gb in groups[i + 1:] for a in ga for b in gb]
        else:
            pairs = []
        for a, b in pairs + self.cut_pairs:
            rules += [f"ip saddr {a.ip} ip daddr {b.ip} drop", f"ip saddr {b.ip} ip daddr {a.ip} drop"]
        if self.loss_percent:
            rules.append(f"ip saddr {MEMBERS_NET} ip daddr {MEMBERS_NET} "
                         f"numgen random mod 100 < {self.loss_percent} drop")
        self._nft("flush chain bridge faults links\n" + "".join(
            f"add rule bridge faults links {rule}\n" for rule in rules))

    def _require_netns(self, what):
        if not self.netns:
            raise RuntimeError(f"{what} needs netns=True (loopback links can't be cut one by one)")

    def partition(self, *groups) -> None:
        """Cut every link between members of different groups (both directions); members not
        named in any group, now or added later, form one more group. Replaces any earlier
        partition; cuts and loss stay."""
        self._require_netns("partition")
        self.partition_groups = [list(g) for g in groups]
        self._apply_link_faults()

    def cut(self, pairs) -> None:
        """Also cut the given member pairs (both directions): e.g. a bridge partition where one
        member still sees both sides."""
        self._require_netns("cut")
        self.cut_pairs += list(pairs)
        self._apply_link_faults()

    def isolate(self, member: Member) -> None:
        self.partition([member])

    def set_loss(self, percent: int) -> None:
        """Drop `percent`% of member-to-member packets at random (each direction)."""
        self._require_netns("loss")
        self.loss_percent = percent
        self._apply_link_faults()

    def set_delay(self, one_way_ms: float) -> None:
        """Hold back every packet a member sends to another member by `one_way_ms`."""
        self._require_netns("delay")
        for m in self.members:
            self._set_member_delay(m, one_way_ms)

    def _set_member_delay(self, m: Member, one_way_ms: float):
        old = self.delay_procs.pop(m.name, None)
        if old:
            self._ns(m.ns, "iptables", "-D", "OUTPUT", "-d", MEMBERS_NET,
                     "-j", "NFQUEUE", "--queue-num", "0", check=False)
            old.kill()
            old.wait()
        if one_way_ms <= 0:
            return
        binary = nfq_delay_binary()
        proc = subprocess.Popen(["ip", "netns", "exec", m.ns, binary, "0", str(int(one_way_ms * 1000))],
                                stdout=subprocess.DEVNULL, stderr=open(self.dir / f"nfq-{m.name}.log", "ab"))
        self.delay_procs[m.name] = proc
        time.sleep(0.1)  # the queue is bound before packets are sent to it
        self._ns(m.ns, "iptables", "-A", "OUTPUT", "-d", MEMBERS_NET,
                 "-j", "NFQUEUE", "--queue-num", "0")

    def heal(self) -> None:
        """Every link back, no loss, no delay."""
        if self.netns:
            self.partition_groups, self.cut_pairs, self.loss_percent = None, [], 0
            self._apply_link_faults()
            if self.delay_procs:
                self.set_delay(0)

    # ---- members -------------------------------------------------------------------------

    def new_member(self) -> Member:
        """A member with its addresses (and namespace), not yet in the cluster nor started."""
        m = Member(self, self.next_index)
        self.next_index += 1
        if self.netns:
            self._add_member_namespace(m)
            self.namespaced_members.append(m)
            if self.partition_groups is not None:
                self._apply_link_faults()
        return m

    def initial_cluster(self, members) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in members)

    def start(self, ready: bool = True) -> "Cluster":
        """Start every member; with `ready`, return once they agree on a leader and serve."""
        self.members = [self.new_member() for _ in range(self._size)]
        initial = self.initial_cluster(self.members)
        for m in self.members:
            m.start(initial, "new")
        if ready:
            self.wait_ready()
        dead = [m for m in self.members if not m.alive()]
        if dead:
            raise RuntimeError(f"{dead} exited at start\n{self.log_tails()}")
        return self

    def live(self):
        return [m for m in self.members if m.alive()]

    def leader(self, timeout_s: float = READY_TIMEOUT_S, among=None) -> Member:
        """The member that a live member reports as leader and that says so itself, with the
        highest term if a stale leader is still around."""
        deadline = time.monotonic() + timeout_s
        while True:
            best = None
            for m in among or self.live():
                st = m.status()
                if st and st.leader == st.header.member_id and (best is None or st.header.raft_term > best[0]):
                    best = (st.header.raft_term, m)
            if best:
                return best[1]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader within {timeout_s}s\n{self.log_tails()}")
            time.sleep(0.1)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> Member:
        """Every live member answers Status and agrees on one leader, and a linearizable read
        succeeds through each (so each has applied up to the leader's commit)."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = [m.status() for m in self.live()]
            leaders = {st.leader for st in statuses if st}
            if statuses and all(statuses) and len(leaders) == 1 and 0 not in leaders:
                if all(self._linearizable_read_ok(m) for m in self.live() if not m.learner):
                    return self.leader(timeout_s=1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ready within {timeout_s}s (leaders {leaders})\n{self.log_tails()}")
            time.sleep(0.1)

    def _linearizable_read_ok(self, m: Member) -> bool:
        try:
            rpc_grpc.KVStub(m.channel()).Range(rpc.RangeRequest(key=b"ready-probe"), timeout=2)
            return True
        except grpc.RpcError:
            return False

    def log_tails(self, lines: int = 8) -> str:
        return "\n".join(f"--- {m.name} ({'up' if m.alive() else 'down'}) {m.log_path}\n{m.log_tail(lines)}"
                         for m in self.members)

    # ---- etcdctl and membership ----------------------------------------------------------

    def etcdctl(self, *args, endpoints=None, check=True) -> subprocess.CompletedProcess:
        """etcdctl 3.5.1 against `endpoints` (members; default every live one), run where the
        members' advertised client URLs are reachable (our router namespace with netns)."""
        targets = endpoints if endpoints is not None else self.live()
        eps = ",".join(m.client_url.removeprefix("http://") for m in targets)
        cmd = [harness.etcd_bin("etcdctl"), f"--endpoints={eps}", *args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.router_ns, *cmd]
        env = dict(os.environ, ETCDCTL_API="3")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=ETCDCTL_TIMEOUT_S, env=env)
        if check and result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def etcdctl_membership(self, *args, endpoints=None) -> subprocess.CompletedProcess:
        """A membership change, retried while the leader refuses it as "unhealthy cluster"
        (etcd's strict reconfiguration check wants every member connected for 5 s first)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            result = self.etcdctl(*args, endpoints=endpoints or [self.leader()], check=False)
            if result.returncode == 0:
                return result
            if "unhealthy cluster" not in result.stderr or time.monotonic() > deadline:
                raise RuntimeError(f"etcdctl {' '.join(args)} failed: {result.stderr.strip()[-400:]}")
            time.sleep(0.5)

    def member_list(self):
        """Members as etcd reports them: dicts with ID, name, peerURLs, clientURLs, isLearner."""
        out = self.etcdctl("member", "list", "-w", "json", endpoints=[self.leader()]).stdout
        return json.loads(out).get("members", [])

    def member_add(self, learner: bool = False) -> Member:
        """Add a member through the Cluster service, then start it with
        --initial-cluster-state existing."""
        m = self.new_member()
        args = ["member", "add", m.name, f"--peer-urls={m.peer_url}", "-w", "json"]
        if learner:
            args.append("--learner")
        out = json.loads(self.etcdctl_membership(*args).stdout)
        m.id = out["member"]["ID"]
        m.learner = learner
        peers = []
        for info in out["members"]:
            name = info.get("name") or (m.name if info["ID"] == m.id else None)
            peers += [f"{name}={url}" for url in info["peerURLs"]]
        # A new member asks one of the others for the membership and refuses to start if that
        # one has not applied the add yet (etcd does the same), so wait until they all have;
        # a member cut off by a partition never will, and the newcomer cannot reach it either.
        deadline = time.monotonic() + MEMBER_ADD_SPREAD_S
        while time.monotonic() < deadline and not all(self._lists_member(x, m) for x in self.live()):
            time.sleep(0.1)
        self.members.append(m)
        m.start(",".join(peers), "existing")
        # Listening is not joining: etcd binds its ports before it fetches the membership.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while m.status() is None:
            if time.monotonic() > deadline or not m.alive():
                raise RuntimeError(f"{m.name} did not join\n{self.log_tails()}")
            time.sleep(0.1)
        return m

    def _lists_member(self, x: Member, m: Member) -> bool:
        """Does member x's own (serializable) member list have m?"""
        try:
            resp = rpc_grpc.ClusterStub(x.channel()).MemberList(rpc.MemberListRequest(), timeout=STATUS_TIMEOUT_S)
        except grpc.RpcError:
            return False
        return any(info.ID == m.id for info in resp.members)

    def member_remove(self, m: Member) -> None:
        others = [x for x in self.live() if x is not m]
        self.etcdctl_membership("member", "remove", f"{m.id:x}", endpoints=others)
        self.members.remove(m)
        m.stop()

    def member_promote(self, m: Member, timeout_s: float = 20.0) -> None:
        """Promote a learner, retrying while the leader says it is not ready yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.etcdctl("member", "promote", f"{m.id:x}", endpoints=[self.leader()], check=False)
            if result.returncode == 0:
                m.learner = False
                return
            # Both refusals pass once the learner has caught up and published its attributes.
            transient = "in sync" in result.stderr or "not enough started members" in result.stderr
            if time.monotonic() > deadline or not transient:
                raise RuntimeError(f"promote {m.name}: {result.stderr.strip()[-300:]}\n{self.log_tails()}")
            time.sleep(0.3)

    def move_leader(self, target: Member) -> None:
        leader = self.leader()
        if not target.id:
            target.status()
        self.etcdctl("move-leader", f"{target.id:x}", endpoints=[leader])

    # ---- convergence ---------------------------------------------------------------------

    def wait_converged(self, timeout_s: float = READY_TIMEOUT_S):
        """Wait until every live member is at the same revision; then compare HashKV at it.
        Returns (revision, {member: hash}); raises if the revisions never meet."""
        deadline = time.monotonic() + timeout_s
        self.wait_ready(timeout_s)
        while True:
            revs = {}
            for m in self.live():
                st = m.status()
                revs[m] = st.header.revision if st else None
            if None not in revs.values() and len(set(revs.values())) == 1:
                revision = next(iter(revs.values()))
                return revision, {m: m.hash_kv(revision).hash for m in self.live()}
            if time.monotonic() > deadline:
                raise RuntimeError(f"members never reached one revision: {revs}\n{self.log_tails()}")
            time.sleep(0.1)

    # ---- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        for m in self.members:
            m.close_channel()
            m.kill()
            if m.relay:
                m.relay.close()
        for proc in self.delay_procs.values():
            proc.kill()
        self.delay_procs.clear()
        for ns in reversed(self.namespaces):
            _delete_namespace(ns)
        self.namespaces.clear()
        if os.environ.get("CLUSTER_KEEP_DIRS") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def nfq_delay_binary() -> str:
    """Build tests/cluster/nfq_delay.c once per source version (needs gcc and
    libnetfilter-queue-dev); returns the path of the binary."""
    src = HERE / "nfq_delay.c"
    out = Path(tempfile.gettempdir()) / f"basalt-nfq-delay-{int(src.stat().st_mtime)}"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src), "-lnetfilter_queue"], timeout=120)
        tmp.rename(out)
    return str(out)


def delay_available() -> str:
    """Why link delay can't be used here, or "" when it can."""
    why = netns_available()
    if why:
        return why
    if not shutil.which("iptables") or not shutil.which("gcc"):
        return "link delay needs iptables and gcc"
    try:
        nfq_delay_binary()
    except (subprocess.CalledProcessError, OSError) as e:
        return f"nfq_delay does not build (libnetfilter-queue-dev missing?): {e}"
    return ""


def main():
    """`cluster.py up`: start a cluster for a benchmark, print where it is (one JSON line), and
    keep it until SIGTERM or SIGINT, then tear everything down."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--kind", default=cluster_binary(), choices=["basalt", "etcd"])
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--netns", action="store_true")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay between members")
    parser.add_argument("--base-dir", help="where the data dirs go (default: the temp dir)")
    args = parser.parse_args()
    c = Cluster(kind=args.kind, size=args.size, netns=args.netns, base_dir=args.base_dir)
    try:
        c.start()
        if args.delay_ms:
            c.set_delay(args.delay_ms)
        leader = c.leader()
        print(json.dumps({
            "router_ns": c.router_ns if c.netns else None,
            "leader": leader.client_url.removeprefix("http://"),
            "endpoints": [m.client_url.removeprefix("http://") for m in c.members],
            # Where perf/cluster.sh measures the round trip between members.
            "leader_ns": leader.ns,
            "followers": [[m.ns, m.ip] for m in c.members if m is not leader],
        }), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        c.close()


if __name__ == "__main__":
    main()
