"""Hosts of a test's own: network namespaces joined to this machine by a veth pair, whose link
the test may cut and restore.

A :class:`Host` is a namespace (``ip netns``) with one end of a veth pair in it, on a private
/30 of ``10.231.0.0/16`` picked at random among those no interface here uses: this machine is
``gateway``, the host is ``address``. Processes started in it (:meth:`Host.start`) see only
its ``lo`` and its end of the link, so they reach the test's brokers and API server at
``gateway``, and a cut of the link cuts them off from everything.

Two ways to cut it (:meth:`Host.cut`):

``drop``
    Every packet on the link, either way, vanishes: a ``blackhole`` queueing discipline on each
    end. Both ends stay up, nobody gets an error, and each side's TCP retransmits into silence,
    as when a switch or a router between two hosts fails. The realistic cut, and the default.
``down``
    The machine's end of the link is taken down: the host sees its link lose its carrier (as
    when its cable is pulled) and its packets go nowhere; this machine's packets to the host
    are dropped by a fallback ``blackhole`` route (without it they would take the default
    route out of this machine), so senders here get an error at once for new connections and
    nothing for the ones open.

Each host is deleted (its processes killed, its namespace, link and route removed) by
:meth:`Host.delete`, which the ``make_host`` fixture calls at teardown whatever the outcome.
Needs root and ``ip`` and ``tc`` (iproute2), with the kernel's veth and ``blackhole``
queueing discipline; without them the test is skipped (failed under ``CI=true``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.processes import Process, Processes, unavailable

#: The private range hosts take their /30 from (unlikely to be used by anything else).
SUBNETS = ipaddress.IPv4Network("10.231.0.0/16")
#: Metric of the fallback route that drops this machine's packets to a host whose link is down.
FALLBACK_METRIC = 32000
#: The ways :meth:`Host.cut` cuts a link.
CUTS = ("drop", "down")


class Host:
    """A network namespace with a veth link to this machine, on a /30 of its own."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        tag = os.urandom(3).hex()
        #: The namespace's name (``ip netns exec NAME``).
        self.name = f"celeriac-{tag}"
        #: The link's two ends: this machine's, and the host's (at most 15 characters each).
        self.outer = f"cel{tag}h"
        self.inner = f"cel{tag}n"
        self.subnet = _free_subnet()
        gateway, address = list(self.subnet.hosts())
        #: This machine's address on the link: where the host reaches servers here.
        self.gateway = str(gateway)
        #: The host's address on the link.
        self.address = str(address)
        #: How the link is cut now (one of :data:`CUTS`), or None while it is up.
        self.cut_by: str | None = None
        self.started: list[Process] = []
        self._created = False

    def create(self) -> None:
        """Make the namespace and its link, and wait for nothing: the link is up at once."""
        _require_tools()
        self._created = True
        prefix = self.subnet.prefixlen
        _ip("netns", "add", self.name)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _ip("link", "set", self.inner, "netns", self.name)
        _ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/{prefix}", "dev", self.inner)
        _ip("-n", self.name, "link", "set", self.inner, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        # A route the kernel uses only while the link's own is gone (its end is down): the
        # host's packets are dropped here instead of leaving by the default route.
        _ip("route", "add", "blackhole", str(self.subnet), "metric", str(FALLBACK_METRIC))

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path | None = None
    ) -> Process:
        """Start ``argv`` inside the host (``ip netns exec``, which execs it: the process's pid
        is the program's), logged and killed as every process of the test."""
        process = self.processes.start(name, [_IP, "netns", "exec", self.name, *argv], env, cwd)
        self.started.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the host and wait for it (its output as text)."""
        return subprocess.run(
            [_IP, "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cut(self, how: str = "drop") -> None:
        """Cut the link (see the module's docstring for ``drop`` and ``down``)."""
        if how not in CUTS:
            raise ValueError(f"unknown cut {how!r}: one of {CUTS}")
        assert self.cut_by is None, f"the link of {self.name} is cut already"
        if how == "drop":
            _tc("qdisc", "add", "dev", self.outer, "root", "blackhole")
            _tc("qdisc", "add", "dev", self.inner, "root", "blackhole", netns=self.name)
        else:
            _ip("link", "set", self.outer, "down")
        self.cut_by = how

    def restore(self) -> None:
        """Put the link back as it was."""
        assert self.cut_by is not None, f"the link of {self.name} is not cut"
        if self.cut_by == "drop":
            _tc("qdisc", "del", "dev", self.outer, "root")
            _tc("qdisc", "del", "dev", self.inner, "root", netns=self.name)
        else:
            _ip("link", "set", self.outer, "up")
        self.cut_by = None

    def delete(self) -> None:
        """Kill the host's processes, then remove its namespace, link and route (each step
        whatever became of the others)."""
        for process in reversed(self.started):
            process.kill()
        if not self._created:
            return
        _ip("route", "del", "blackhole", str(self.subnet), "metric", str(FALLBACK_METRIC), ok=True)
        # Deleting either end deletes the pair; the namespace's end goes with the namespace.
        _ip("link", "del", self.outer, ok=True)
        _ip("netns", "del", self.name, ok=True)


_IP = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "/usr/sbin/ip"
_TC = shutil.which("tc", path="/usr/sbin:/sbin:/usr/bin:/bin")


def _require_tools() -> None:
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    if not os.access(_IP, os.X_OK) or _TC is None:
        unavailable(f"{_IP} or tc (iproute2) is missing: test hosts need both")


def _run(argv: Sequence[str], ok: bool) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0 and not ok:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def _ip(*args: str, ok: bool = False) -> None:
    """Run ``ip ARGS``; a failure raises unless ``ok`` (teardown goes on regardless)."""
    _run([_IP, *args], ok)


def _tc(*args: str, netns: str | None = None) -> None:
    """Run ``tc ARGS``, here or in namespace ``netns``."""
    prefix = [_IP, "netns", "exec", netns] if netns else []
    _run([*prefix, _TC or "tc", *args], False)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of :data:`SUBNETS` that no interface of this machine has an address in."""
    taken: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run(
            [_IP, "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10
        ).stdout
        for line in listed.splitlines():
            fields = line.split()
            if "inet" in fields:
                taken.add(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    choices = list(SUBNETS.subnets(new_prefix=30))
    for subnet in random.sample(choices, 64):
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError(f"no free /30 in {SUBNETS} after 64 tries")
