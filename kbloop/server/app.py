"""kbloop's HTTP API and web page, served by one process (`kbloop serve`).

- ``/v1/models`` and ``/v1/chat/completions`` (streamed or not) speak OpenAI's chat API, so chat
  clients can use kbloop as a model; each answer carries its sources in an extra ``kbloop`` field.
- ``/api/search``, ``/api/status``, ``/api/ingest``, ``/api/feedback``, ``/api/adapters`` and
  ``/api/evals`` serve the web page (``/``) and scripts.
- Every error, from any route, is ``{"error": {"type", "message", "status"}}``.

This module is the HTTP edge only; ``kbloop.server.service`` holds what keeps concurrent
requests and a running ingest from getting in each other's way.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from importlib import resources
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kbloop.assistant.answer import Answer, Progress
from kbloop.server.address import LOOPBACK
from kbloop.server.reports import adapters, eval_file
from kbloop.server.service import Service
from kbloop.errors import KbloopError, NotFound
from kbloop.models.cancel import stops_on
from kbloop.text import loads_finite

log = logging.getLogger(__name__)

MODEL_ID = "kbloop"
MAX_BODY = 1 << 20
SQLITE_MAX_INT = 2**63 - 1  # the largest id a rating can have
BODY_TIMEOUT = 30.0  # seconds for a body to arrive once its head has; the head's own is in protocol.py
MAX_HEAD = 16 * 1024  # bytes of request line and headers
KEEP_ALIVE = 5  # seconds an idle connection stays open between requests
MAX_CONCURRENCY = 100  # open connections (or requests in flight) before new requests get 503
ERROR_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "timeout", 409: "conflict", 413: "too_large", 422: "invalid_request",
               500: "internal_error", 503: "unavailable"}
WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8"}
PAGE_POLICY = "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# -- errors ------------------------------------------------------------------------------------

class ApiError(Exception):
    """A request the HTTP layer refuses (too large, not JSON, invalid fields), with its status;
    what the library refuses arrives as a KbloopError that carries its own."""

    def __init__(self, http_status: int, message: str):
        super().__init__(message)
        self.http_status = http_status


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of every route."""
    body = {"error": {"type": ERROR_TYPES.get(status, "error"), "message": message, "status": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_event(exc: BaseException) -> dict:
    """An error inside a stream that has already begun, in the same shape."""
    status, message = describe_error(exc)
    return {"error": {"type": ERROR_TYPES.get(status, "error"), "message": message, "status": status}}


def describe_error(exc: BaseException) -> tuple[int, str]:
    """The status and message of any error; a bug's details stay in the server log."""
    if isinstance(exc, (ApiError, KbloopError)):
        return exc.http_status, str(exc)
    log.error("request failed", exc_info=exc)
    return 500, f"internal error ({exc.__class__.__name__}); the server log has the details"


def answered(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """``endpoint``, answering a bug with the error shape itself. An error handler registered
    for ``Exception`` runs in Starlette's outermost middleware, which re-raises after the reply,
    and the server then drops the connection a client's pool would reuse for its next request."""
    @functools.wraps(endpoint)
    async def run(request: Request) -> Any:
        try:
            return await endpoint(request)
        except (HTTPException, ApiError, KbloopError, ClientDisconnect):
            raise  # their own handlers answer them
        except Exception as exc:  # noqa: BLE001 - logged with its traceback by describe_error
            return error_response(*describe_error(exc))
    return run


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3])


# -- request bodies ----------------------------------------------------------------------------

# Every request model is strict: "yes" is no boolean and "5" no number, so a typo is refused
# instead of read as something else (``{"rebuild": "yes"}`` starting a full rebuild).

class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only the text ones mean anything here
            parts = [p.get("text", "") for p in self.content if p.get("type") == "text"]
            if not all(isinstance(part, str) for part in parts):  # not a question worded "None"
                raise ApiError(422, "messages: the text of a text part must be a string")
            return "".join(parts)
        return self.content or ""


class ChatRequest(BaseModel):
    # Sampling options (temperature, max_tokens, ...) are accepted and ignored: answers are
    # greedy and grounded, and their length is KBLOOP_MAX_NEW_TOKENS.
    model_config = ConfigDict(extra="allow", strict=True)
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: str = Field(min_length=1, max_length=4000)
    k: int | None = Field(None, ge=1, le=200)


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    paths: list[str] | None = Field(None, description="Files or folders inside docs/; all of docs/ when absent.")
    rebuild: bool = False


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    rating: Literal["up", "down"]
    question: str = Field(min_length=1, max_length=8000)
    answer: str = Field(max_length=50000)
    comment: str | None = Field(None, max_length=8000)
    sources: list[dict[str, Any]] = Field(default_factory=list, max_length=100)
    model: str | None = None
    adapter: str | None = None
    refused: bool = False
    # The right answer, with a thumbs-down; the feedback store bounds it (a one-line 400).
    correction: str | None = None


async def read_body(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``; an empty body means every field's default. A client that
    goes away before sending it all raises ClientDisconnect, which ``create_app`` logs."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for part in request.stream():
                body += part
                if len(body) > MAX_BODY:
                    raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT:g} s") from None
    try:
        data = loads_finite(body) if body.strip() else {}
    except RecursionError:
        raise ApiError(400, "the body nests too deeply to read: send flatter JSON") from None
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, _validation_message(exc)) from None


# -- OpenAI-shaped answers ---------------------------------------------------------------------

def conversation(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """The question (the last user message) and the earlier (question, answer) turns.
    System messages are ignored: kbloop writes its own grounded prompt."""
    turns = [(m.role, m.text()) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise ApiError(400, "the last message must be the user's question, and not empty")
    history, pending = [], None
    for role, text in turns[:-1]:
        if role == "user":
            pending = text
        elif pending is not None:
            history.append((pending, text))
            pending = None
    return turns[-1][1].strip(), history


def usage(answer: Answer) -> dict:
    prompt = answer.timings.get("prompt_tokens") or 0
    completion = answer.timings.get("completion_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(request_id: str, created: int, answer: Answer) -> dict:
    return {
        "id": request_id, "object": "chat.completion", "created": created, "model": MODEL_ID,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": usage(answer), "kbloop": answer.as_dict(with_text=True),
    }


def chunk(request_id: str, created: int, delta: dict, finish: str | None = None, **extra: Any) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": MODEL_ID,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


_END = object()


async def in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate a blocking iterator on its own thread. Closing this stops and closes it there,
    which is where a generator holding the model lock must be closed."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, (item, error))
        except RuntimeError:  # the server shut down under us
            stop.set()

    def work() -> None:
        try:
            with stops_on(stop):  # every model of this answer stops once the client has gone
                source = make()
                try:
                    for item in source:
                        put(item)
                        if stop.is_set():
                            break
                finally:
                    getattr(source, "close", lambda: None)()
        except BaseException as exc:  # noqa: BLE001 - handed to the request's task, which answers with it
            put(None, exc)
            return
        put(_END)

    threading.Thread(target=work, name="kbloop-answer", daemon=True).start()
    try:
        while True:
            item, error = await items.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()


async def disconnected(request: Request) -> None:
    """Return once the client has gone: the only message left once its body is read."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # never a busy loop, whatever else a server may send


async def unless_gone(request: Request, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items`` until the client goes away. The body is read, so the client's next message can
    only say that it has gone; it is watched while each piece is awaited (text held back may
    keep the first one for the whole reply), and the piece pending then is cancelled, which
    stops the answer at the model's next token and frees the model."""
    gone = asyncio.ensure_future(disconnected(request))
    try:
        while True:
            step = asyncio.ensure_future(anext(items))
            await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                await asyncio.wait({step})
                log.info("chat completion: the client went away before its answer was done")
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        gone.cancel()


# -- the app -----------------------------------------------------------------------------------

class Guard:
    """Checks every request before routing: the Host (against DNS rebinding, when bound to
    loopback), the Origin (no cross-site calls from a browser) and, when set, the API key."""

    def __init__(self, app: Any, *, api_key: str, loopback_only: bool):
        self.app, self.api_key, self.loopback_only = app, api_key, loopback_only

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        problem = self.check(scope) if scope["type"] == "http" else None
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message = problem
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        await error_response(status, message, headers)(scope, receive, send)

    def check(self, scope: dict) -> tuple[int, str] | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.loopback_only and urlsplit(f"//{host}").hostname not in LOOPBACK:
            return 403, f"host {host!r} is not a loopback name; the server listens on loopback only"
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != host:
            return 403, f"cross-origin request from {origin} refused"
        if self.api_key and scope["path"].startswith(("/api/", "/v1/")):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return 401, "missing or wrong API key: send the header Authorization: Bearer <KBLOOP_API_KEY>"
        return None


def create_app(service: Service) -> Any:
    """The ASGI app serving ``service``: routes, the error shape and the request guard."""
    data_dir = service.home.data_dir
    web = resources.files("kbloop.server").joinpath("web")

    def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=headers)

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in WEB_FILES:
            raise NotFound(f"no page file {name}")
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if name == "index.html":
            headers |= {"Content-Security-Policy": PAGE_POLICY, "Referrer-Policy": "no-referrer"}
        return Response(web.joinpath(name).read_bytes(), media_type=WEB_FILES[name], headers=headers)

    async def list_models(request: Request) -> JSONResponse:
        return json_response({"object": "list", "data": [{
            "id": MODEL_ID, "object": "model", "created": service.started_at, "owned_by": "kbloop",
            "kbloop": {"generator": service.settings.generator, "embedder": service.settings.embedder},
        }]})

    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, ChatRequest)
        if body.model != MODEL_ID:
            raise NotFound(f"unknown model {body.model!r}: GET /v1/models lists {MODEL_ID!r}")
        question, history = conversation(body.messages)
        request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        items = in_thread(lambda: service.answer(question, history))
        watched, first = unless_gone(request, items), None
        try:
            first = await anext(watched, None)  # errors before the first piece still get their status code
            while not body.stream and first is not None and not isinstance(first, Answer):
                first = await anext(watched, None)  # the whole answer, for a reply in one piece
        finally:
            await watched.aclose()
            if first is None or not body.stream:
                await items.aclose()
        if first is None:
            return Response(status_code=400)  # the client went away: no one is left to read it
        if not body.stream:
            return json_response(completion(request_id, created, first))
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            try:
                yield sse(chunk(request_id, created, {"role": "assistant", "content": ""}))
                item, streamed = first, ""
                while not isinstance(item, Answer):
                    if isinstance(item, Progress):
                        yield sse(chunk(request_id, created, {}, kbloop_progress=item.stage))
                    else:
                        yield sse(chunk(request_id, created, {"content": item}))
                        streamed += item
                    item = await anext(items)
                if item.retracts(streamed):
                    # Marked, so a client that shows the final answer itself can skip it.
                    yield sse(chunk(request_id, created, {"content": f"\n\n{item.answer}"}, kbloop_retraction=True))
                yield sse(chunk(request_id, created, {}, "stop", kbloop=item.as_dict(with_text=True)))
                if include_usage:
                    yield sse(chunk(request_id, created, {}) | {"choices": [], "usage": usage(item)})
            except Exception as exc:  # noqa: BLE001 - the stream has begun: the error becomes its last event
                yield sse(error_event(exc))
            finally:
                await items.aclose()
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def search(request: Request) -> JSONResponse:
        if request.method == "POST":
            body = await read_body(request, SearchRequest)
        else:
            params = {"query": request.query_params.get("q"), "k": request.query_params.get("k")}
            try:
                # Query parameters are all text: here, and only here, "5" may mean 5.
                body = SearchRequest.model_validate({k: v for k, v in params.items() if v is not None}, strict=False)
            except ValidationError as exc:
                raise ApiError(422, _validation_message(exc).replace("query:", "q:")) from None
        started = time.perf_counter()
        hits = await run_in_threadpool(service.search, body.query, body.k)
        return json_response({"query": body.query, "hits": hits,
                              "took_ms": round((time.perf_counter() - started) * 1000, 2)})

    async def status(request: Request) -> JSONResponse:
        return json_response(await run_in_threadpool(service.status))

    async def start_ingest(request: Request) -> JSONResponse:
        body = await read_body(request, IngestRequest)
        job = service.ingests.start(service.ingest_paths(body.paths), body.rebuild)
        return json_response(asdict(job), 202, {"Location": f"/api/ingest/{job.id}"})

    async def ingest_job(request: Request) -> JSONResponse:
        job_id = request.path_params.get("job")
        job = service.ingests.jobs.get(job_id) if job_id else service.ingests.latest()
        if job is None:
            raise NotFound(f"no ingest {job_id}" if job_id else "no ingest has run in this server")
        return json_response(asdict(job))

    async def feedback(request: Request) -> JSONResponse:
        if request.method == "POST":
            body = await read_body(request, FeedbackRequest)
            feedback_id = await run_in_threadpool(lambda: service.add_feedback(
                body.rating, body.question, body.answer, comment=body.comment, sources=body.sources,
                model=body.model, adapter=body.adapter, refused=body.refused, correction=body.correction))
            return json_response({"id": feedback_id, "rating": body.rating,
                                  "eval_candidate": body.rating == "down"}, 201)
        rating = request.query_params.get("rating")
        if rating not in (None, "up", "down"):
            raise ApiError(422, "rating: expected up or down")
        try:
            limit = max(1, min(int(request.query_params.get("limit", 100)), 1000))
        except ValueError:
            raise ApiError(422, "limit: expected a whole number") from None
        return json_response({"feedback": await run_in_threadpool(service.feedback, rating, limit)})

    async def withdraw_correction(request: Request) -> JSONResponse:
        raw = request.path_params["id"]
        if not (raw.isascii() and raw.isdigit()):  # "²" is a digit to str.isdigit, not to int()
            raise ApiError(422, "id: expected a rating's id, a whole number")
        if int(raw) > SQLITE_MAX_INT:
            raise NotFound(f"no rating {raw}")
        rating = await run_in_threadpool(service.withdraw_correction, int(raw))
        return json_response({"id": rating["id"], "withdrawn_at": rating["withdrawn_at"]})

    async def list_adapters(request: Request) -> JSONResponse:
        serving = service.model.adapter if service.model.loaded else None
        return json_response({"adapters": await run_in_threadpool(adapters, data_dir, serving)})

    async def list_evals(request: Request) -> JSONResponse:
        return json_response(await run_in_threadpool(service.evals))

    async def report_file(request: Request) -> Response:
        run, name = request.path_params["run"], request.path_params["name"]
        found = eval_file(data_dir, run, name)
        if found is None:
            raise NotFound(f"no report file {run}/{name}")
        path, media_type = found
        return Response(path.read_bytes(), media_type=media_type,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, HTTPException):
            message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
            return error_response(exc.status_code, message.get(exc.status_code, str(exc.detail)), exc.headers)
        return error_response(*describe_error(exc))

    async def on_disconnect(request: Request, exc: ClientDisconnect) -> Response:
        # Routine (a closed tab, a cancelled script), not a server error: one line, no traceback.
        log.info("%s %s: the client went away before sending its whole request", request.method, request.url.path)
        return Response(status_code=400)  # no one is left to read it

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()

    routes = [
        Route("/", answered(page), methods=["GET"]),
        Route("/static/{name}", answered(page), methods=["GET"]),
        Route("/v1/models", answered(list_models), methods=["GET"]),
        Route("/v1/chat/completions", answered(chat_completions), methods=["POST"]),
        Route("/api/search", answered(search), methods=["GET", "POST"]),
        Route("/api/status", answered(status), methods=["GET"]),
        Route("/api/ingest", answered(start_ingest), methods=["POST"]),
        Route("/api/ingest", answered(ingest_job), methods=["GET"]),
        Route("/api/ingest/{job}", answered(ingest_job), methods=["GET"]),
        Route("/api/feedback", answered(feedback), methods=["GET", "POST"]),
        Route("/api/feedback/{id}/correction", answered(withdraw_correction), methods=["DELETE"]),
        Route("/api/adapters", answered(list_adapters), methods=["GET"]),
        Route("/api/evals", answered(list_evals), methods=["GET"]),
        Route("/api/evals/{run}/{name}", answered(report_file), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: on_error, ApiError: on_error, KbloopError: on_error,
                                        ClientDisconnect: on_disconnect, Exception: on_error})
    loopback_only = service.settings.serve_host in LOOPBACK
    return Guard(app, api_key=service.settings.api_key, loopback_only=loopback_only)


# -- running it --------------------------------------------------------------------------------

def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why there is none."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets that
    # say they are TCP, and with Nagle on each small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise KbloopError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): "
                          "pick another with --port or KBLOOP_SERVE_PORT") from None
    sock.listen(128)  # from here on a client's connection waits in the backlog for the server
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app: Any, log_requests: bool = False) -> Any:
    """uvicorn with bounds for what clients may hold: idle time, head size and time, connections."""
    import uvicorn

    from kbloop.server.protocol import HeadDeadlineProtocol

    return uvicorn.Server(uvicorn.Config(
        app, http=HeadDeadlineProtocol, log_level="info" if log_requests else "warning", access_log=log_requests,
        timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE, h11_max_incomplete_event_size=MAX_HEAD,
        limit_concurrency=MAX_CONCURRENCY))


def run_server(app: Any, sock: socket.socket, log_requests: bool = False) -> None:
    """Serve until SIGINT or SIGTERM (the foreground `kbloop serve`)."""
    _server(app, log_requests).run(sockets=[sock])


@contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` on a background thread of this process and yield its base URL: the
    in-process way to call the real HTTP API, for tests and benchmarks."""
    with serving(app, bind(host, port)) as url:
        yield url


@contextmanager
def serving(app: Any, sock: socket.socket) -> Iterator[str]:
    """Serve ``app`` on ``sock`` from a background thread for as long as the block runs."""
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="kbloop-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(15)
