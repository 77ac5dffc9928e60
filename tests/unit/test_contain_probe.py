"""Declared probes (``issuer.probe``): the status decides, the credential goes only to the declared URL.

A tiny local HTTP server plays the issuer: it accepts one bearer token, refuses others with 401,
and one path redirects elsewhere (a redirect is not followed, so the credential cannot be led away).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from digestguard.inventory import Backends, Probe
from tasks.contain import UNPROVEN, ProbeResult, outcome, prober_for


@pytest.fixture()
def issuer():
    seen: list[tuple[str, str]] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            auth = self.headers.get("Authorization") or self.headers.get("X-Api-Key") or ""
            seen.append((self.path, auth))
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:9/steal")
            elif auth in ("Bearer new-token", "new-token"):
                self.send_response(200)
            elif self.path == "/weird":
                self.send_response(500)
            else:
                self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()
    srv.server_close()


def _probe(url: str, **kw):
    return prober_for("manual", {}, {"kind": "manual", "probe": Probe(url=url, **kw).model_dump()}, Backends())


def test_declared_probe_refuses_the_old_and_accepts_the_new(issuer):
    url, seen = issuer
    p = _probe(f"{url}/v2/")
    old, new = p({"value": SecretStr("old-token")}), p({"value": SecretStr("new-token")})
    assert (old.verdict, new.verdict) == ("refused", "accepted") and "HTTP 401" in old.evidence
    assert seen == [("/v2/", "Bearer old-token"), ("/v2/", "Bearer new-token")]
    assert "old-token" not in old.evidence and "new-token" not in new.evidence
    assert outcome(old, new, has_probe=True, old_held=True) == ("done", "rotated")


def test_header_probe_and_a_status_that_means_nothing(issuer):
    url, _ = issuer
    assert _probe(f"{url}/x", send="header", header="X-Api-Key")({"value": SecretStr("new-token")}).verdict == "accepted"
    weird = _probe(f"{url}/weird")({"value": SecretStr("old-token")})
    assert weird.verdict == "unknown" and "neither refused nor ok" in weird.evidence
    assert outcome(weird, ProbeResult("accepted", ""), has_probe=True, old_held=True)[0] == "needs-person"


def test_a_redirect_is_not_followed_so_the_credential_cannot_be_led_elsewhere(issuer):
    url, seen = issuer
    res = _probe(f"{url}/redirect")({"value": SecretStr("old-token")})
    assert res.verdict == "unknown" and [p for p, _ in seen] == ["/redirect"]


def test_unreachable_issuer_is_unknown_never_refused():
    res = _probe("http://127.0.0.1:9/")({"value": SecretStr("old-token")})
    assert res.verdict == "unknown"
    assert outcome(res, None, has_probe=True, old_held=True)[0] == "needs-person"


def test_outcomes_never_call_an_unproven_copy_rotated():
    refused, accepted = ProbeResult("refused", ""), ProbeResult("accepted", "")
    assert outcome(None, None, has_probe=False, old_held=False) == ("needs-person", UNPROVEN)
    assert outcome(accepted, accepted, has_probe=True, old_held=True)[0] == "failed"
    assert outcome(refused, ProbeResult("refused", ""), has_probe=True, old_held=True)[0] == "failed"
    assert outcome(refused, accepted, has_probe=True, old_held=False)[0] == "needs-person"
    assert prober_for("vault-kv", {"path": "x"}, None, Backends()) is None
    assert prober_for("postgres-role", {"role": "app"}, None, Backends()) is None  # no address: no probe, not a guess
