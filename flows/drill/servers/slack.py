"""A local server speaking the Slack Web API, enough for ``slack_sdk.WebClient`` to talk to it unchanged.

Also Socket Mode, for the approval buttons: ``apps.connections.open`` (app-level ``xapp-`` token) hands out a
``ws://127.0.0.1`` URL; the websocket (PyPI ``websockets``) sends ``hello``, then ``interactive`` envelopes
(``click``) that slack-sdk's unmodified ``SocketModeClient`` receives and acknowledges with ``{"envelope_id"}``.

No Slack server can run here, so this one answers the methods digestguard uses,
the way Slack does (HTTP 200 with ``{"ok": false, "error": ...}`` for API errors,
channel *ids* in answers, ``chat.update`` only by id):

* ``auth.test``, ``chat.postMessage`` (threads, ``reply_broadcast``), ``chat.update``,
  ``conversations.create`` (name rules, ``name_taken``);
* the three steps of ``files_upload_v2``: ``files.getUploadURLExternal`` -> POST to the
  returned upload URL -> ``files.completeUploadExternal``.

Every call is recorded (method, parsed params, whether it was faulted) so tests can
assert on exactly what reached "Slack". Faults prove the client's behaviour:
``fail(method, status=429, retry_after=1)`` answers rate-limited, ``fail(method,
mode="close")`` drops the connection without answering, ``fail("*", status=500,
times=None)`` keeps failing, and ``stop()`` leaves nothing listening (connection refused).

Example::

    with SlackServer() as slack:
        client = SlackClient(slack.token, base_url=slack.api_url)
        client.post("#sec-incident", "hello")
        assert slack.calls_to("chat.postMessage")[0].params["text"] == "hello"
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from websockets.sync.server import serve as ws_serve

_CHANNEL_NAME = re.compile(r"^[a-z0-9_-]{1,80}$")


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    authorized: bool
    faulted: str | None = None
    at: float = field(default_factory=time.time)


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[Any]
    thread_ts: str | None = None
    reply_broadcast: bool = False
    edits: int = 0


@dataclass
class Fault:
    method: str
    status: int = 429
    mode: str = "status"  # "status" | "close"
    retry_after: int | None = 1
    times: int | None = 1  # None: forever


class SlackServer:
    """The fake workspace: channels, messages, files, recorded calls and queued faults."""

    def __init__(self, token: str = "xoxb-test-0000-digestguard", channels: tuple[str, ...] = ("sec-incident",)) -> None:
        self.token = token
        self.team_id = "T0DIGEST"
        self.bot_user = "U0BOT"
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._ts = itertools.count(1)
        self.channels: dict[str, str] = {}  # name -> id
        self.messages: dict[tuple[str, str], Message] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        for name in channels:
            self._new_channel(name)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.app_token = "xapp-1-A0DIGEST-0000-digestguard"
        self.sockets: list[Any] = []        # open Socket Mode connections
        self.acks: list[str] = []           # envelope ids the app acknowledged
        self._ws: Any = None
        self.ws_port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "SlackServer":
        server = self
        port = self.port  # restart on the same port after stop()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="slack-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: clients now get 'connection refused' (Slack down)."""
        if self._ws is not None:
            self._ws.shutdown()
            self._ws = None
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "SlackServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    # ------------------------------------------------------------------ test helpers
    def fail(self, method: str = "*", *, status: int = 429, mode: str = "status", retry_after: int | None = 1,
             times: int | None = 1) -> None:
        """Queue a fault for ``method`` (``*`` for any): a status answer or a dropped connection."""
        with self._lock:
            self.faults.append(Fault(method, status, mode, retry_after, times))

    def heal(self) -> None:
        with self._lock:
            self.faults.clear()

    def calls_to(self, method: str, *, ok_only: bool = False) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and not (ok_only and c.faulted)]

    def channel_messages(self, channel: str) -> list[Message]:
        """Top-level and broadcast messages of a channel (by id or name), oldest first."""
        cid = self.channels.get(channel.lstrip("#"), channel)
        with self._lock:
            return [m for (c, _), m in sorted(self.messages.items(), key=lambda kv: float(kv[0][1]))
                    if c == cid and (m.thread_ts is None or m.reply_broadcast)]

    def thread(self, channel: str, ts: str) -> list[Message]:
        """Replies in a thread, oldest first."""
        with self._lock:
            return [m for (c, _), m in sorted(self.messages.items(), key=lambda kv: float(kv[0][1]))
                    if c == channel and m.thread_ts == ts]

    def all_text(self) -> str:
        """Every string that reached the server in any call (to prove something never did)."""
        with self._lock:
            return "\n".join(json.dumps(c.params, default=str) for c in self.calls) + "\n" + "\n".join(
                f.get("content", b"").decode("utf-8", "replace") for f in self.files.values())

    # ------------------------------------------------------------------ internals
    def _new_channel(self, name: str) -> str:
        cid = f"C{next(self._ids):08d}"
        self.channels[name] = cid
        return cid

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.method in ("*", method):
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.faults.remove(f)
                    return f
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        path = h.path.split("?", 1)[0]
        if path.startswith("/upload/v1/"):
            method = "upload"
            params: dict[str, Any] = {"file_id": path.rsplit("/", 1)[-1], "length": len(raw)}
        elif path.startswith("/api/"):
            method = path[len("/api/"):]
            params = self._parse(h, raw)
        else:
            self._send(h, 404, {"ok": False, "error": "unknown_method"})
            return
        auth = h.headers.get("Authorization", "")
        want = self.app_token if method == "apps.connections.open" else self.token  # Socket Mode takes the app-level token
        authorized = auth == f"Bearer {want}" or params.get("token") == want
        fault = self._take_fault(method)
        label = None if fault is None else ("close" if fault.mode == "close" else str(fault.status))
        call = Call(method, params, authorized, label)
        with self._lock:
            self.calls.append(call)
        if fault:
            if fault.mode == "close":
                h.close_connection = True
                try:
                    h.connection.shutdown(2)
                except OSError:
                    pass
                return
            headers = {"Retry-After": str(fault.retry_after)} if fault.status == 429 and fault.retry_after is not None else {}
            error = "ratelimited" if fault.status == 429 else "internal_error"
            self._send(h, fault.status, {"ok": False, "error": error}, headers)
            return
        if method == "upload":
            status, body = self._upload(params["file_id"], raw)
            h.send_response(status)
            h.send_header("Content-Type", "text/plain; charset=utf-8")
            payload = body.encode()
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
            return
        if not authorized:
            self._send(h, 200, {"ok": False, "error": "not_authed" if not auth else "invalid_auth"})
            return
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            self._send(h, 200, {"ok": False, "error": "unknown_method"})
            return
        with self._lock:
            answer = handler(params)
        self._send(h, 200, answer)

    @staticmethod
    def _parse(h: BaseHTTPRequestHandler, raw: bytes) -> dict[str, Any]:
        ctype = h.headers.get("Content-Type", "")
        if "application/json" in ctype:
            return json.loads(raw or b"{}")
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)

    def _channel_id(self, value: str | None, *, by_name: bool = True) -> str | None:
        if not value:
            return None
        if value in self.channels.values():
            return value
        if by_name:
            return self.channels.get(value.lstrip("#"))
        return None

    # ------------------------------------------------------------------ methods
    def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"{self.url}/", "team": "digestguard-test", "team_id": self.team_id,
                "user": "digestguard", "user_id": self.bot_user, "bot_id": "B0BOT"}

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(p.get("channel"))
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("text") and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        thread_ts = p.get("thread_ts")
        if thread_ts and (cid, thread_ts) not in self.messages:
            return {"ok": False, "error": "thread_not_found"}
        blocks = p.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        ts = self._next_ts()
        broadcast = str(p.get("reply_broadcast", "")).lower() in ("true", "1")
        msg = Message(cid, ts, p.get("text", ""), blocks, thread_ts, broadcast)
        self.messages[(cid, ts)] = msg
        return {"ok": True, "channel": cid, "ts": ts,
                "message": {"type": "message", "text": msg.text, "ts": ts, "user": self.bot_user, "thread_ts": thread_ts}}

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(p.get("channel"), by_name=False)  # Slack requires the channel id here
        if cid is None:
            return {"ok": False, "error": "channel_not_found"}
        msg = self.messages.get((cid, str(p.get("ts"))))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        if "text" in p:
            msg.text = p["text"]
        if "blocks" in p:
            blocks = p["blocks"]
            msg.blocks = json.loads(blocks) if isinstance(blocks, str) else (blocks or [])
        msg.edits += 1
        return {"ok": True, "channel": cid, "ts": msg.ts, "text": msg.text}

    def _m_conversations_create(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(p.get("name") or "")
        if not name:
            return {"ok": False, "error": "invalid_name_required"}
        if not _CHANNEL_NAME.match(name):
            return {"ok": False, "error": "invalid_name_specials"}
        if name in self.channels:
            return {"ok": False, "error": "name_taken"}
        cid = self._new_channel(name)
        return {"ok": True, "channel": {"id": cid, "name": name, "is_channel": True,
                                        "is_private": str(p.get("is_private", "")).lower() in ("true", "1"),
                                        "created": int(time.time()), "creator": self.bot_user}}

    def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        if not p.get("filename") or not str(p.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        fid = f"F{next(self._ids):08d}"
        self.files[fid] = {"id": fid, "name": p["filename"], "length": int(p["length"]), "content": None, "complete": False}
        return {"ok": True, "upload_url": f"{self.url}/upload/v1/{fid}", "file_id": fid}

    def _upload(self, fid: str, raw: bytes) -> tuple[int, str]:
        with self._lock:
            f = self.files.get(fid)
            if f is None:
                return 404, "not found"
            f["content"] = raw
            return 200, f"OK - {len(raw)}"

    def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        items = p.get("files")
        items = json.loads(items) if isinstance(items, str) else (items or [])
        cid = self._channel_id(p.get("channel_id"))
        if p.get("channel_id") and cid is None:
            return {"ok": False, "error": "channel_not_found"}
        out = []
        for it in items:
            f = self.files.get(it.get("id"))
            if f is None or f["content"] is None:
                return {"ok": False, "error": "file_not_found"}
            f.update(complete=True, title=it.get("title"), channel=cid, thread_ts=p.get("thread_ts"),
                     initial_comment=p.get("initial_comment"))
            out.append({"id": f["id"], "name": f["name"], "title": f.get("title"), "size": len(f["content"])})
        return {"ok": True, "files": out}

    # ------------------------------------------------------------------ Socket Mode
    def _m_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        """Slack's ``apps.connections.open``: a websocket URL for the app (here plain ``ws://`` on loopback)."""
        if self._ws is None:
            self._start_ws()
        return {"ok": True, "url": f"ws://127.0.0.1:{self.ws_port}/link/?ticket={uuid.uuid4().hex}&app_id=A0DIGEST"}

    def _start_ws(self) -> None:
        server = self

        def handler(conn: Any) -> None:
            conn.send(json.dumps({"type": "hello", "num_connections": 1, "debug_info": {"host": "digestguard-stand-in"},
                                  "connection_info": {"app_id": "A0DIGEST"}}))
            with server._lock:
                server.sockets.append(conn)
            try:
                for message in conn:
                    data = json.loads(message)
                    if data.get("envelope_id"):
                        with server._lock:
                            server.acks.append(data["envelope_id"])
            except Exception:  # noqa: BLE001 - a closed socket ends the handler
                pass
            finally:
                with server._lock:
                    if conn in server.sockets:
                        server.sockets.remove(conn)

        self._ws = ws_serve(handler, "127.0.0.1", 0)
        self.ws_port = self._ws.socket.getsockname()[1]
        threading.Thread(target=self._ws.serve_forever, name="slack-socket-mode", daemon=True).start()

    def click(self, user_id: str, action_id: str, value: str, *, timeout: float = 20.0) -> str:
        """A person clicks a button on a message: one ``interactive`` ``block_actions`` envelope to the connected
        app (as Slack sends it); returns the envelope id once the app acknowledged it."""
        deadline = time.monotonic() + timeout
        while not self.sockets:
            if time.monotonic() > deadline:
                raise TimeoutError("no Socket Mode connection")
            time.sleep(0.1)
        envelope = str(uuid.uuid4())
        payload = {"type": "block_actions", "user": {"id": user_id, "username": user_id.lower(), "team_id": self.team_id},
                   "team": {"id": self.team_id}, "api_app_id": "A0DIGEST", "trigger_id": f"trig-{envelope[:8]}",
                   "actions": [{"action_id": action_id, "block_id": "digestguard_gate", "value": value, "type": "button",
                                "action_ts": f"{time.time():.6f}"}]}
        with self._lock:
            conn = self.sockets[-1]
        conn.send(json.dumps({"envelope_id": envelope, "type": "interactive", "accepts_response_payload": False,
                              "payload": payload}))
        while envelope not in self.acks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"envelope {envelope} was never acknowledged")
            time.sleep(0.05)
        return envelope

