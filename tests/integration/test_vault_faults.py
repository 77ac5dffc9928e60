"""The Vault/OpenBao client against a hostile loopback server (issue 15, point 2).

Stand-in: :mod:`tests.fakes.hostile_http`, a plain HTTP server answering every path (so also Vault's
``/v1/auth/token/lookup-self``) with one fault; the client under test is the vendor's unmodified
``hvac.Client`` with our bounded ``requests`` session (:func:`integrations._rest.bounded_session`). The
well-behaved paths are proven against a real OpenBao in ``test_vault.py``. For each fault: the call ends
within its deadline (plus one socket timeout), with the typed error naming the Vault address, and no more
than the cap (plus socket buffers) was read.
"""

from __future__ import annotations

import time

import pytest

from digestguard.errors import IntegrationError, RateLimited, Refused, Unavailable
from integrations import vault
from integrations._rest import MAX_JSON_BYTES
from tests.fakes.hostile_http import start_hostile_http

DEADLINE = 2.0
SLACK = 8 << 20  # loopback socket buffers: what a server may have written that nobody read


@pytest.fixture
def hostile(request):
    h = start_hostile_http(request.param)
    yield h
    h.stop()


EXPECT = {  # fault -> (error type, words the message carries)
    "drip": (Unavailable, "deadline"),
    "huge": (Refused, "cap"),
    "huge-declared": (Refused, "cap"),
    "429-long": (RateLimited, ""),
    "503-long": (Unavailable, ""),
    "flood-error": (Unavailable, ""),
    "non-json": (IntegrationError, "not JSON"),
    "wrong-type": (IntegrationError, "not an object"),
}


@pytest.mark.parametrize("hostile", list(EXPECT), indirect=True)
def test_vault_call_is_bounded(hostile):
    kind, words = EXPECT[hostile.fault]
    t0 = time.monotonic()
    with pytest.raises(kind) as err:
        vault.connect(hostile.url, "hvs.not-a-real-token", timeout=1.0, deadline=DEADLINE)
    took = time.monotonic() - t0
    assert took < DEADLINE + 1.5, f"{hostile.fault}: took {took:.1f}s"
    assert hostile.url in str(err.value) and words in str(err.value)
    assert "hvs.not-a-real-token" not in str(err.value)
    assert hostile.sent <= MAX_JSON_BYTES + SLACK
    if hostile.fault.endswith("-long"):
        assert hostile.calls == 1  # an hour's wait is not slept through, nor hammered


@pytest.mark.parametrize("hostile", ["drip"], indirect=True)
def test_token_probe_is_bounded(hostile):
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="deadline"):
        vault.token_probe(hostile.url, "hvs.not-a-real-token", timeout=1.0, deadline=DEADLINE)
    assert time.monotonic() - t0 < DEADLINE + 1.5


@pytest.mark.parametrize("hostile", ["huge-declared", "503-long"], indirect=True)
def test_contain_stage_reports_a_hostile_vault_as_unproven_not_rotated(hostile):
    """The contain stage's probe of a Vault token against a Vault that floods or asks to wait an hour:
    the verdict is "unknown" naming the address, so the outcome is needs-person, never "rotated".
    (A dripping Vault gives the same typed error after the default deadline; proven above with 2 s.)"""
    from pydantic import SecretStr

    from digestguard.inventory import Backends
    from tasks.contain import ProbeResult, outcome, prober_for

    prober = prober_for("vault-token", {"addr": hostile.url}, None, Backends())
    assert prober is not None
    t0 = time.monotonic()
    old = prober({"value": SecretStr("hvs.old-leaked")})
    assert time.monotonic() - t0 < 5
    assert old.verdict == "unknown" and hostile.url in old.evidence and "hvs.old-leaked" not in old.evidence
    status, why = outcome(old, ProbeResult("accepted", "new ok"), has_probe=True, old_held=True)
    assert status == "needs-person" and "unproven" in why


@pytest.mark.parametrize("hostile", ["wrong-type", "non-json"], indirect=True)
def test_a_non_vault_answer_to_a_kv_call_is_a_typed_error_not_a_crash(hostile):
    """Past ``connect`` (the client made by hand, as if the server changed under a run), a KV read, write and
    metadata call that get a 200 which is not Vault's JSON object raise an IntegrationError naming the address
    and path, never a bare TypeError or KeyError that would escape the stage's fault handling."""
    import hvac
    from pydantic import SecretStr

    from integrations._rest import bounded_session

    client = hvac.Client(url=hostile.url, token="hvs.not-a-real-token", timeout=1.0,
                         session=bounded_session("vault", deadline=DEADLINE))
    calls = [lambda: vault.kv_read(client, "ci/x"), lambda: vault.kv_metadata(client, "ci/x"),
             lambda: vault.kv_write(client, "ci/x", {"value": SecretStr("new-value-1")})]
    for call in calls:
        with pytest.raises(IntegrationError) as err:
            call()
        assert hostile.url in str(err.value) and "ci/x" in str(err.value)
        assert "new-value-1" not in str(err.value)
