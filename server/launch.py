"""Launch: spawn the scheduler and detokenizer, wait until both are ready, serve HTTP, and tear down.

Readiness: each child sends `Ready` (the scheduler after its model loaded); uvicorn binds the port only after
both did, so an accepted connection is always served. A child that reports `ChildFailed`, dies, or is not ready
within CHILD_READY_TIMEOUT_S ends the launch with exit status 1.
Death: a watchdog checks the children every WATCHDOG_INTERVAL_S; when one is gone, every in-flight and new
request gets 503, and after DEATH_GRACE_S the server stops and the process exits 1.
Shutdown (SIGTERM / SIGINT): new requests and /health get 503 while in-flight requests finish, for up to
--shutdown-drain-seconds; then uvicorn stops accepting, what is still in flight fails with 503 (streams get an
error event), children are told to exit, then terminated / killed if they linger; exit status 0. Children also
exit on their own when the main process disappears, so none is orphaned even after a SIGKILL.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from typing import Sequence

import uvicorn
import uvloop

from server.app import build_app
from server.auth import KeyRing
from server.cli import parse_server_args
from server.detokenizer import run_detokenizer_process
from server.ipc import IpcAddresses
from server.metrics import ServerMetrics
from server.scheduler_process import run_scheduler_process
from server.tokenizer_manager import TokenizerManager

CHILD_READY_TIMEOUT_S = 600.0
WATCHDOG_INTERVAL_S = 0.5
DEATH_GRACE_S = 1.0  # keep answering 503 briefly so clients and probes see why, then exit
GRACEFUL_SHUTDOWN_S = 5
CHILD_JOIN_S = 5.0

logger = logging.getLogger("pairserve.server")


def default_served_model_name(model_arg: str) -> str:
    """The basename for a path (a checkpoint dir, a .gguf file); a hub-style or alias name ('demo', 'org/name') as
    given."""
    if os.path.isdir(model_arg) or os.path.isfile(model_arg):
        return os.path.basename(os.path.normpath(os.path.abspath(model_arg)))
    return model_arg


def port_available(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ready_line(host: str, port: int, model_name: str, api_key: str | None) -> str:
    """The one line printed once the server accepts requests: its URL and a curl command that works as printed
    (the key, if one is required, shows as $API_KEY rather than in the clear)."""
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    auth = ' -H "Authorization: Bearer $API_KEY"' if api_key else ""
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'
            % model_name.replace('"', '\\"'))
    return (f"pairserve is ready on {url} (model {model_name!r}); try: curl {url}/v1/chat/completions"
            f" -H 'Content-Type: application/json'{auth} -d '{body}'")


class StartupInterrupted(Exception):
    """SIGTERM / SIGINT arrived before the server was ready."""


class _Server(uvicorn.Server):
    """uvicorn.Server that drains on SIGTERM / SIGINT: new requests (and /health) get 503 at once while in-flight
    ones run to completion for up to `drain_s`; then uvicorn stops and whatever is left fails with 503. A second
    signal skips the rest of the drain."""

    def __init__(self, config: uvicorn.Config, tm: TokenizerManager, stop_requested, drain_s: float,
                 ready_line: str):
        super().__init__(config)
        self.tm = tm
        self.stop_requested = stop_requested
        self.drain_s = drain_s
        self.ready_line = ready_line
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.stop_requested():  # a signal that arrived before uvicorn installed its handlers
            self.should_exit = True
        elif self.started:
            logger.info("%s", self.ready_line)

    def handle_exit(self, sig, frame) -> None:
        if self._loop is None or self._drain_task is not None or self.drain_s <= 0:
            super().handle_exit(sig, frame)
            return
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._drain_task is None:
            self.tm.start_draining("the server is shutting down")
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_s
        while self.tm.states and time.monotonic() < deadline and not self.should_exit:
            await asyncio.sleep(0.05)
        logger.info("drained (%d request(s) left); stopping", len(self.tm.states))
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        self.tm.fail_all(503, "the server is shutting down")
        await super().shutdown(sockets)


class Launcher:
    def __init__(self, args, model_path: str, keyring: KeyRing | None = None):
        self.args = args
        self.keyring = keyring if keyring is not None else KeyRing.from_args(args)
        self.model_path = model_path
        self.served_model_names = args.served_model_name or (default_served_model_name(args.model_path),)
        self.addrs = IpcAddresses.create(args.port)
        self.procs: dict[str, mp.Process] = {}
        self.tm: TokenizerManager | None = None
        self.stop_signal: int | None = None
        self.exit_code = 0

    def _on_signal(self, signum, frame) -> None:
        # Before serving: noted, and the readiness wait gives up. While serving, uvicorn's handlers are in place;
        # uvicorn re-raises the signal once it has stopped, which lands here again and is ignored.
        self.stop_signal = signum

    def start_children(self) -> None:
        ctx = mp.get_context("spawn")
        args_dict = dataclasses.asdict(self.args)
        addrs, me = self.addrs.to_dict(), os.getpid()
        self.procs["scheduler"] = ctx.Process(target=run_scheduler_process, name="pairserve-scheduler",
                                              args=(args_dict, self.model_path, addrs, me), daemon=True)
        self.procs["detokenizer"] = ctx.Process(target=run_detokenizer_process, name="pairserve-detokenizer",
                                                args=(self.model_path, addrs, me, self.args.log_level), daemon=True)
        for p in self.procs.values():
            p.start()

    def check_alive(self) -> None:
        if self.stop_signal is not None:
            raise StartupInterrupted(f"signal {self.stop_signal} during startup")
        for name, p in self.procs.items():
            if not p.is_alive():
                raise RuntimeError(f"{name} process exited with code {p.exitcode} during startup")

    async def watchdog(self, server: _Server, recv_task: asyncio.Task) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            dead = [f"{name} process died (exit code {p.exitcode})" for name, p in self.procs.items()
                    if not p.is_alive()]
            if recv_task.done():
                exc = None if recv_task.cancelled() else recv_task.exception()
                dead.append(f"the receive loop stopped ({exc!r})")
            if dead:
                reason = "; ".join(dead) + "; the server is exiting"
                logger.error(reason)
                self.tm.fail_all(503, reason)
                self.exit_code = 1
                await asyncio.sleep(DEATH_GRACE_S)
                server.should_exit = True
                return

    async def serve(self) -> int:
        from engine.models.loader import load_tokenizer

        self.tm = TokenizerManager(self.addrs, ServerMetrics(self.served_model_names[0]), self.args)
        self.start_children()
        self.tm.tokenizer = load_tokenizer(self.model_path, self.args.chat_template)  # while the children load
        await self.tm.wait_ready(set(self.procs), self.check_alive, CHILD_READY_TIMEOUT_S)
        self.check_alive()
        pids = {name: p.pid for name, p in self.procs.items()}
        app = build_app(self.tm, self.args, self.served_model_names, pids, model_path=self.model_path,
                        keyring=self.keyring)
        config = uvicorn.Config(app, host=self.args.host, port=self.args.port, loop="uvloop",
                                log_level=self.args.log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                                access_log=self.args.log_level == "debug")
        server = _Server(config, self.tm, lambda: self.stop_signal is not None, self.args.shutdown_drain_seconds,
                         ready_line(self.args.host, self.args.port, self.served_model_names[0], self.args.api_key))
        recv_task = asyncio.create_task(self.tm.recv_loop())
        watch_task = asyncio.create_task(self.watchdog(server, recv_task))
        logger.debug("scheduler pid %d, detokenizer pid %d", pids["scheduler"], pids["detokenizer"])
        try:
            await server.serve()
        finally:
            for task in (watch_task, recv_task):
                task.cancel()
        if server.started is False and self.exit_code == 0:
            self.exit_code = 1  # uvicorn could not bind
        return self.exit_code

    def stop_children(self) -> None:
        if self.tm is not None:
            self.tm.shutdown_children()
        deadline = time.monotonic() + (CHILD_JOIN_S if self.tm is not None else 0.0)
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            return uvloop.run(self.serve())
        except StartupInterrupted as e:
            logger.info("%s", e)
            return 0
        except RuntimeError as e:
            logger.error("%s", e)
            return 1
        finally:
            self.stop_children()
            if self.tm is not None:
                self.tm.close()
            self.addrs.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_server_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from engine.models.loader import check_model_args, read_chat_template, resolve_model_path

    try:
        model_path = resolve_model_path(args.model_path)
        check_model_args(model_path, args.quantization, args.quant_group_size, args.quantize_lm_head)
        if args.chat_template is not None:
            read_chat_template(args.chat_template)  # fail before any child starts
        if args.tp_size > 1:  # the model must split tp_size ways: say so before any process starts
            from engine.distributed.sharding import check_tp_size
            from engine.models.loader import model_config

            check_tp_size(model_config(model_path), args.tp_size)
    except (FileNotFoundError, ValueError) as e:  # ValueError: a GGUF of an unsupported architecture or type
        print(f"python -m server: error: {e}", file=sys.stderr)
        return 2
    try:
        keyring = KeyRing.from_args(args)  # refuses an empty key, a bad key file, a key given twice
    except ValueError as e:
        print(f"python -m server: error: {e}", file=sys.stderr)
        return 2
    if not port_available(args.host, args.port):
        print(f"python -m server: error: port: {args.host}:{args.port} is already in use", file=sys.stderr)
        return 1
    return Launcher(args, model_path, keyring).run()
