"""A loopback server that speaks Ollama's HTTP API (the parts kbloop uses).

Embeddings are a hashed bag of words, so texts sharing words get similar vectors. A ``fault``
makes streamed chat replies fail the ways a real server's can: ``"cut"`` sends half the reply,
then closes the connection in the middle of the chunked body (Ollama killed mid-answer);
``"trickle"`` sends the reply one byte every ``trickle_seconds``, so no single read times out.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIM = 64


def bag_of_words(text: str) -> list[float]:
    vec = [0.0] * DIM
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
    return vec


class FakeOllama:
    def __init__(self, models=("nomic-embed-text",), reply=None, fault=None, trickle_seconds=0.05):
        self.models = set(models)
        # reply(request body) -> the assistant's text for /api/chat
        self.reply = reply or (lambda body: "I don't know.")
        self.fault, self.trickle_seconds = fault, trickle_seconds
        self.requests: list[tuple[str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/api/tags":
                    self._send(200, {"models": [{"name": m, "model": m} for m in sorted(fake.models)]})
                else:
                    self._send(404, {"error": "not found"})

            def _chat(self, body: dict) -> None:
                text = fake.reply(body)
                words = re.findall(r"\S+\s*", text) or [""]
                base = {"model": body["model"], "created_at": "2026-01-01T00:00:00Z"}
                final = base | {"message": {"role": "assistant", "content": ""}, "done": True,
                                "done_reason": "stop", "prompt_eval_count": 42, "eval_count": len(words)}
                if body.get("stream", True) is False:
                    self._send(200, final | {"message": {"role": "assistant", "content": text}})
                    return
                # one NDJSON line per token, as Ollama streams
                lines = [json.dumps(base | {"message": {"role": "assistant", "content": word}, "done": False})
                         .encode() + b"\n" for word in words] + [json.dumps(final).encode() + b"\n"]
                if fake.fault == "cut":
                    self._cut(lines)
                elif fake.fault == "trickle":
                    self._trickle(lines)
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.end_headers()
                    for line in lines:
                        self.wfile.write(line)
                        self.wfile.flush()

            def _cut(self, lines: list[bytes]) -> None:
                self.protocol_version = "HTTP/1.1"  # chunked, as Ollama: a cut body is detectably incomplete
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in lines[: max(1, len(lines) // 2)]:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.close_connection = True  # without the closing zero-length chunk

            def _trickle(self, lines: list[bytes]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                try:
                    for byte in b"".join(lines):
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(fake.trickle_seconds)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append((self.path, body))
                if self.path not in ("/api/embed", "/api/chat"):
                    self._send(404, {"error": "not found"})
                elif body.get("model") not in fake.models:
                    self._send(404, {"error": f"model \"{body.get('model')}\" not found, try pulling it first"})
                elif self.path == "/api/chat":
                    self._chat(body)
                else:
                    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    self._send(200, {"model": body["model"], "embeddings": [bag_of_words(t) for t in inputs]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOllama":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
