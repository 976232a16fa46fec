"""Hosts on one machine for tests: Linux network namespaces joined by veth pairs to a bridge.

Every "host" is a namespace of its own with `lo` up and one interface, `eth0`, whose peer sits in a
switch namespace holding the bridge. Nothing is created in the root namespace: the addresses (a
private /24) exist only inside the namespaces, there is no default route and no NAT, so nothing a
test runs there can reach, or be reached from, the machine's own network. `Network.close` kills every
process left in the namespaces and deletes them (which deletes their veths and the bridge).

What the commands are is pure (`plan`, `setup_commands`, `cut_commands`; table-tested in
test_multihost.py); running them is `Network`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0.0/24"  # private; exists only inside the namespaces of one test run
IFNAME = "eth0"
BRIDGE = "sw0"
NOWHERE = "02:00:00:00:00:01"  # a locally administered link address no interface of ours has


@dataclass(frozen=True)
class Host:
    role: str
    ns: str  # the namespace's name
    addr: str  # its address on the test's subnet (no prefix length)
    port: str  # its veth's peer, in the switch namespace


@dataclass(frozen=True)
class Plan:
    switch: str  # the namespace holding the bridge
    prefixlen: int
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(h.ns for h in self.hosts.values())]


def plan(run_id: str, roles: Sequence[str], subnet: str = SUBNET) -> Plan:
    """Names and addresses for `roles` in one test run: namespaces `brmh-RUN-ROLE` (unique per run),
    addresses from the subnet's first usable one on, the veth peer `p-ROLE` (interface names have at
    most 15 bytes)."""
    if len(set(roles)) != len(roles):
        raise ValueError(f"roles must be unique: {roles}")
    net = ipaddress.ip_network(subnet)
    if not net.is_private:
        raise ValueError(f"{subnet} is not a private range")
    usable = list(net.hosts())
    if len(roles) > len(usable):
        raise ValueError(f"{subnet} has room for {len(usable)} hosts, not {len(roles)}")
    hosts: dict[str, Host] = {}
    for role, addr in zip(roles, usable, strict=False):
        port = f"p-{role}"
        if len(port.encode()) > 15 or not role.isalnum():
            raise ValueError(f"role {role!r}: alphanumeric and at most 13 characters")
        hosts[role] = Host(role, f"brmh-{run_id}-{role}", str(addr), port)
    return Plan(f"brmh-{run_id}-switch", net.prefixlen, hosts)


def setup_commands(p: Plan) -> list[list[str]]:
    """`ip` commands that build the network of `p`, in order; every one names its namespace (`-n`),
    so none acts on the root namespace."""
    sw = p.switch
    cmds = [["ip", "netns", "add", ns] for ns in p.namespaces]
    cmds += [["ip", "-n", sw, "link", "set", "lo", "up"],
             ["ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge"],
             ["ip", "-n", sw, "link", "set", BRIDGE, "up"]]
    for h in p.hosts.values():
        cmds += [["ip", "-n", h.ns, "link", "set", "lo", "up"],
                 ["ip", "-n", sw, "link", "add", h.port, "type", "veth", "peer", "name", IFNAME, "netns", h.ns],
                 ["ip", "-n", sw, "link", "set", h.port, "master", BRIDGE],
                 ["ip", "-n", sw, "link", "set", h.port, "up"],
                 ["ip", "-n", h.ns, "addr", "add", f"{h.addr}/{p.prefixlen}", "dev", IFNAME],
                 ["ip", "-n", h.ns, "link", "set", IFNAME, "up"]]
    return cmds


def cut_commands(a: Host, b: Host, *, restore: bool = False) -> list[list[str]]:
    """Cut (or restore) the path between two hosts, both ways, and nothing else: each one's neighbour
    entry for the other is pinned to a link address no interface has, so their packets are dropped
    silently, as on a partition (connects time out, open connections stall; no reset, no error), while
    each still reaches every other host. Restoring deletes the entries (address resolution runs again)."""
    if restore:
        return [["ip", "-n", x.ns, "neigh", "del", y.addr, "dev", IFNAME] for x, y in ((a, b), (b, a))]
    return [["ip", "-n", x.ns, "neigh", "replace", y.addr, "lladdr", NOWHERE, "dev", IFNAME, "nud", "permanent"]
            for x, y in ((a, b), (b, a))]


def _ip(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def pids_in(ns: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
    return [int(x) for x in proc.stdout.split()] if proc.returncode == 0 else []


class Network:
    """The namespaces of one plan, built on entry; `close` (always called by `network`) removes all."""

    def __init__(self, p: Plan) -> None:
        self.plan = p
        self.procs: list[subprocess.Popen[bytes]] = []

    def __getitem__(self, role: str) -> Host:
        return self.plan.hosts[role]

    def build(self) -> None:
        for cmd in setup_commands(self.plan):
            _ip(cmd)

    def spawn(self, role: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Run `argv` on host `role` (`ip netns exec` replaces itself with it: the pid is the command's)."""
        with log.open("ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self[role].ns, *argv], stdout=out, stderr=out,
                                    env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, role: str, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self[role].ns, *argv], capture_output=True, text=True,
                              env=env, timeout=timeout)

    def kill_host(self, role: str) -> list[int]:
        """SIGKILL every process of host `role`, as a power cut would; the pids killed."""
        pids = pids_in(self[role].ns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def cut(self, a: str, b: str, *, restore: bool = False) -> None:
        for cmd in cut_commands(self[a], self[b], restore=restore):
            _ip(cmd)

    def close(self) -> None:
        for ns in self.plan.namespaces:
            for pid in pids_in(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for ns in self.plan.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def refused_reason() -> str | None:
    """Why this machine will not let a test make a namespace (not root, no CAP_NET_ADMIN, no `ip`),
    or None when it will: one is made and deleted to find out."""
    ns = f"brmh-probe-{secrets.token_hex(3)}"
    try:
        proc = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    if proc.returncode != 0:
        return f"creating a network namespace was refused (needs root / CAP_NET_ADMIN): {proc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    return None


@contextlib.contextmanager
def network(roles: Sequence[str]) -> Iterator[Network]:
    """A network of hosts named `roles`, removed at the end however the block ends."""
    net = Network(plan(secrets.token_hex(3), roles))
    try:
        net.build()
        yield net
    finally:
        net.close()
