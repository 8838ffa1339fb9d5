"""The matchmaker as an aiohttp application: startup (open the database, rebuild the working
state, start the background loops), shutdown (flush and close), and `run` for `floe server`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from floe.config.schema import counted
from floe.config.settings import ServerSettings

from . import collecting, connections, liveness, retiring, submission, tls
from .api import add_routes
from .api.framework import AUTH, ENGINE
from .auth import Auth
from .engine import Engine
from .frontdoor import FrontDoor
from .notify import Notifier, load_key
from .reload import Reloader
from .storage import files
from .storage.database import CLOSE_GRACE, Database
from .web import add_routes as add_pages
from .web.page import SESSIONS

log = logging.getLogger(__name__)

FRONT_DOOR = web.AppKey("front door", FrontDoor)
SHUTDOWN_GRACE = 10.0
"""Seconds a stopping server gives the requests in flight to be answered before it cancels
them; the database is then closed (storage.database.CLOSE_GRACE more at most)."""


def create_app(settings: ServerSettings, clock: Callable[[], float] = time.time,
               background: bool = True) -> web.Application:
    """The application; `background=False` leaves the loops off (tests drive them)."""
    # aiohttp's own cap on a body, for the pages' forms only: each API route reads its body
    # itself, capped at its own limit (api.framework), so that the refusal is floe's.
    front = FrontDoor(settings)
    app = web.Application(client_max_size=settings.max_request_bytes,
                          middlewares=[front.middleware])
    app[FRONT_DOOR] = front
    add_routes(app)
    add_pages(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        db = await Database.open(settings.database, durability=settings.durability,
                                 cache=settings.cache)
        engine = Engine(db, settings, clock)
        try:
            await engine.load()
        except BaseException:
            await db.close()
            raise
        app[ENGINE] = engine
        app[AUTH] = Auth(engine)
        try:
            app[SESSIONS].open(settings.database)
            engine.notifier = Notifier(engine, load_key(settings.database))
        except BaseException:
            await db.close()
            raise
        if background:
            engine.start_background(
                ("materializer", submission.materialize_loop(engine)),
                ("sweeper", liveness.sweep_loop(engine)),
                ("flusher", engine.flush_loop()),
                ("purger", retiring.resume(engine)))
        log.info("matchmaker ready: %s, %s, database %s", counted(len(engine.datasets), "dataset"),
                 counted(len(engine.active), "running attempt"), settings.database)
        yield
        saved = await _save_state(engine)
        await db.close()
        log.info("matchmaker stopped: %s, database %s closed cleanly",
                 "its state saved" if saved else "its state in memory NOT saved",
                 settings.database)
        front.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(_release_held_asks)
    return app


async def _release_held_asks(app: web.Application) -> None:
    """Before the requests in flight are waited for: the held asks and the requests waiting
    for a dataset's progress are answered at once."""
    if ENGINE in app:
        engine = app[ENGINE]
        engine.holding.close()
        for dataset in engine.datasets.values():
            dataset.watch.close()


async def _save_state(engine: Engine) -> bool:
    """Stop the background loops and store what is kept in memory (heartbeats, fair-share
    usage), waiting `CLOSE_GRACE` at most for the writer: a writer that does not answer must
    not keep the server from stopping. Whether it was saved."""
    try:
        await asyncio.wait_for(engine.stop(), CLOSE_GRACE)
    except TimeoutError:
        log.error("the state kept in memory (heartbeats, fair-share usage) could not be saved "
                  "within %.0fs: the database writer does not answer; the next start rebuilds "
                  "it from what was committed", CLOSE_GRACE)
        return False
    except Exception:
        log.exception("saving the state kept in memory failed; the next start rebuilds it "
                      "from what was committed")
        return False
    return True


def ssl_context(settings: ServerSettings, self_signed: bool) -> ssl.SSLContext | None:
    if self_signed:
        cert, key = tls.self_signed(Path(settings.database).parent)
        log.info("serving with the self-signed certificate %s", cert)
        return tls.context(cert, key)
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise ValueError("TLS needs both a certificate and a key (tls_cert and tls_key)")
        return tls.context(settings.tls_cert, settings.tls_key)
    return None


def run(settings: ServerSettings, self_signed: bool = False,
        reread: Callable[[], ServerSettings] | None = None) -> None:
    """Serve until interrupted (`floe server`). The port is taken first: a port in use is an
    OSError before the database is opened or anything is announced; then the database, which
    must be floe's and used by no other server (StorageError, before anything is announced).
    SIGHUP applies `reread()` (the settings as their file now says; by default the same
    settings, so that only the TLS files and the logs are opened again)."""
    listening = listen(settings.host, settings.port)
    lock = files.ServerLock(Path(settings.database))
    try:
        files.check(Path(settings.database))
        lock.acquire()
        context = ssl_context(settings, self_signed)
    except BaseException:
        lock.release()
        listening.close()
        raise
    try:
        scheme = "https" if context else "http"
        print(f"floe matchmaker on {scheme}://{settings.host}:{settings.port} "
              f"(database {settings.database})", flush=True)
        app = create_app(settings)
        app.cleanup_ctx.append(collecting.collect_seldom)  # after the engine's load
        logging.getLogger("aiohttp.server").addFilter(_MalformedRequests())
        loop = new_event_loop()
        _stop_on_signals(loop)
        reloader = Reloader(settings, reread or (lambda: settings), app[FRONT_DOOR], context,
                            self_signed)
        loop.add_signal_handler(signal.SIGHUP, reloader.reload)
        _run(loop, _serve(app, listening, context, settings))
    finally:
        lock.release()


async def _serve(app: web.Application, listening: socket.socket,
                 context: ssl.SSLContext | None, settings: ServerSettings) -> None:
    """Serve `app` on the listening socket until cancelled, then stop it gracefully: what
    aiohttp's run_app does, with each client address's connections counted."""
    files = connections.raise_open_files_limit()
    too_few = connections.check_open_files_limit(files, settings.max_held_asks)
    if too_few:  # said, not warned of: a site with fewer pilots never comes near it (a
        log.info("%s", too_few)  # warning comes when the connections do: `Counts.admit`)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        counts = connections.Counts(settings.max_connections_per_address, files)
        await connections.GuardedSite(runner, listening, counts, ssl_context=context,
                                      shutdown_timeout=SHUTDOWN_GRACE).start()
        log.info("serving: at most %d connections per client address, %d open files",
                 counts.per_address, files)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _run(loop: asyncio.AbstractEventLoop, main: Any) -> None:
    """Run the coroutine `main` on `loop` until it ends or a signal stops it (GracefulExit,
    raised by `_stop_on_signals`), then cancel it, let it clean up, and close the loop."""
    task = loop.create_task(main)
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
        finally:
            rest = asyncio.all_tasks(loop)
            for other in rest:
                other.cancel()
            if rest:
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a NUL byte in a header, a broken request line) as
    an ERROR with a traceback, and answers it 400 itself: the client's fault, said in one info
    line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        if not logging.getLogger(__name__).isEnabledFor(logging.INFO):
            return False
        record.levelno, record.levelname, record.exc_info = logging.INFO, "INFO", None
        record.msg, record.args = "%s: refused (400): %s", (record.getMessage(),
                                                            str(error).splitlines()[0])
        return True


def _stop_on_signals(loop: asyncio.AbstractEventLoop) -> None:
    """SIGINT and SIGTERM stop the server gracefully, as aiohttp's own handlers would, and the
    log says which one came (the cleanup then says that the database was closed). A signal
    while the server is stopping is said and otherwise ignored: raised in the middle of the
    cleanup, it would leave the database open and the process unable to exit."""
    stopping = []

    def stop(signum: int) -> None:
        name = signal.Signals(signum).name
        if stopping:
            log.warning("%s received again: the matchmaker is already stopping (within %.0fs "
                        "for the requests in flight and %.0fs for each of the database's "
                        "last writes; SIGKILL ends it at once, losing what memory holds)",
                        name, SHUTDOWN_GRACE, CLOSE_GRACE)
            return
        stopping.append(signum)
        log.info("%s received: stopping the matchmaker", name)
        raise web.GracefulExit

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host` (its first address) and `port`."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise OSError(f"host: cannot listen on {host!r}: {exc.strerror}; set host to an "
                      "address of this machine (127.0.0.1, 0.0.0.0 for all) or a name it "
                      "resolves") from None
    listening = socket.socket(family, kind, protocol)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
    except OSError:
        listening.close()
        raise
    return listening


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (a plain aiohttp request costs about 90 us of
    CPU on it against 120 us on asyncio's), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
