"""ZMQ plumbing shared by the server's processes: ipc:// addresses and PUSH / PULL sockets.

Each process binds the PULL socket it reads from and connects PUSH sockets to its peers; ZMQ queues messages
on a PUSH socket until its peer has bound, so start order does not matter. High-water marks are 0
(unbounded): every reader drains its socket continuously, and a bounded PUSH would block the sender — a
scheduler blocked in send() while the main process waits on it would deadlock.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from server.messages import ChildFailed, decode, encode

STARTUP_REPORT_LINGER_MS = 5000


@dataclass(frozen=True)
class IpcAddresses:
    """Where each process's PULL socket lives. `root` is the private directory holding the socket files."""

    root: str
    scheduler: str  # scheduler reads requests here
    detokenizer: str  # detokenizer reads token outputs here
    tokenizer: str  # the main process reads text outputs, stats and control replies here

    @classmethod
    def create(cls, port: int) -> "IpcAddresses":
        # A fresh private dir per launch: two servers (or a stale one's leftovers) never share socket files.
        root = tempfile.mkdtemp(prefix=f"pairserve-{port}-")
        return cls(root, f"ipc://{root}/scheduler", f"ipc://{root}/detokenizer", f"ipc://{root}/tokenizer")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> "IpcAddresses":
        return cls(**d)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _configure(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def pull_socket(ctx: zmq.Context, addr: str) -> zmq.Socket:
    """A bound PULL socket (the reading end)."""
    sock = _configure(ctx.socket(zmq.PULL))
    sock.bind(addr)
    return sock


def push_socket(ctx: zmq.Context, addr: str) -> zmq.Socket:
    """A connected PUSH socket (a writing end)."""
    sock = _configure(ctx.socket(zmq.PUSH))
    sock.connect(addr)
    return sock


def send(sock: zmq.Socket, msg: Any) -> None:
    sock.send(encode(msg))


def recv_all(sock: zmq.Socket, timeout_ms: int) -> list[Any]:
    """Every message waiting on `sock`, waiting up to `timeout_ms` for the first (0: do not wait)."""
    out: list[Any] = []
    if timeout_ms > 0 and not sock.poll(timeout_ms, zmq.POLLIN):
        return out
    while True:
        try:
            data = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return out
        out.append(decode(data))


def report_startup_failure(addrs: IpcAddresses, who: str, error: BaseException) -> None:
    """Tell the main process why this child cannot start; waits (up to STARTUP_REPORT_LINGER_MS) for delivery."""
    ctx = zmq.Context()
    sock = push_socket(ctx, addrs.tokenizer)
    sock.setsockopt(zmq.LINGER, STARTUP_REPORT_LINGER_MS)
    send(sock, ChildFailed(who, os.getpid(), f"{type(error).__name__}: {error}"))
    sock.close()
    ctx.term()  # returns once the message left or the linger expired


def parent_alive(parent_pid: int) -> bool:
    """True while the process that spawned us still runs (we were re-parented if it died)."""
    return os.getppid() == parent_pid
