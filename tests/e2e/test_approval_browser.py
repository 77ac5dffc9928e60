"""Approving in the Prefect UI, in a real browser.

A real Prefect server (``prefect server start``, with its UI) runs the incident flow on the drill's sandbox
(real registry, podman, OpenBao, moto; local servers speaking the GitHub, Slack and GCP protocols, since no real
ones can run here). The test opens the paused run in headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``: no browser download), reads the plan in the resume dialog, first submits the
untouched form (nothing is pre-filled that approves: the gate refuses it, journals the refusal and asks again,
saying why), then approves the rotation by filling the form, rejects the purge, and sees the flow go on and
finish with exactly that outcome.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from digestguard.advisory import load_advisory
from digestguard.journal import Journal
from flows.drill.flow import REPO, build_sandbox
from flows.drill.services import free_port
from tests.e2e.test_incident_flow import _wait_for_pause_text

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory):
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    import os

    from flows.serve import start_server

    port = free_port()
    home = tmp_path_factory.mktemp("prefect-ui-home")
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    try:
        proc = start_server(port, timeout=180)
    finally:
        if old is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = old
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(20)


def _dialog(page, run_url: str, want: str = "Plan hash"):
    """The resume dialog once it shows the pause's form (``want`` in its text); reloads while the UI
    still shows the previous pause's plain 'resume?' dialog."""
    for _ in range(6):
        page.goto(run_url)
        page.get_by_role("button", name="Resume").first.click(timeout=60_000)
        dialog = page.get_by_role("dialog")
        dialog.wait_for(timeout=30_000)
        try:
            dialog.get_by_text(want).first.wait_for(timeout=10_000)
            return dialog
        except Exception:  # noqa: BLE001 - a stale dialog: load the run again
            page.keyboard.press("Escape")
            time.sleep(1)
    raise AssertionError(f"the resume dialog never showed {want!r}")


def _wait_asked(jpath, incident, stage, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jpath.exists():
            ev = [e for e in Journal(jpath).events(incident) if e["kind"] == "asked" and e["detail"].get("stage") == stage]
            if ev:
                return ev[-1]["detail"]["flow_run_id"]
        time.sleep(0.5)
    raise AssertionError(f"the {stage} gate was never reached")


def _wait_paused(run_id, timeout=60):
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as c:
            if c.read_flow_run(run_id).state.is_paused():
                return
        time.sleep(0.5)
    raise AssertionError("run did not pause")


def _wait_refused(jpath, incident, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if [e for e in Journal(jpath).events(incident) if e["kind"] == "refused"]:
            time.sleep(1.5)  # the gate pauses again with the reason
            return
        time.sleep(0.3)
    raise AssertionError("the untouched form was not refused")


def _choose(page, dialog, decision: str) -> None:
    control = dialog.locator("button.p-select-button__control").first  # Prefect UI's select: a listbox popover
    control.focus()
    control.press("ArrowDown")
    page.get_by_role("option", name=decision).click()
    assert dialog.locator(".p-select-button__value").first.inner_text() == decision


def _shown_hash(text: str) -> str:
    m = re.search(r"sha256:[0-9a-f]{64}", text)
    assert m, text[:500]
    return m.group(0)


def test_approve_and_reject_in_the_prefect_ui(prefect_ui, tmp_path):
    from playwright.sync_api import sync_playwright
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with contextlib.ExitStack() as stack, temporary_settings(updates={PREFECT_API_URL: f"{prefect_ui}/api",
                                                                      PREFECT_UI_URL: prefect_ui}):
        sb = build_sandbox(load_advisory("kics-2026-04"), tmp_path, stack)
        incident = "ui-approval-1"
        jpath = sb.root / "journal.sqlite"
        # the flow runs in its own process against the UI's server, as a worker would run it
        env = {**os.environ, "PREFECT_API_URL": f"{prefect_ui}/api", "PREFECT_UI_URL": prefect_ui}
        code = ("import sys; from flows.incident_response import incident_response; "
                "s = incident_response(advisory=sys.argv[1], inventory=sys.argv[2], mode='execute', "
                "incident_id=sys.argv[3], triggered_by='oncall', return_state=True); print(s.type.value)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(sb.advisory_path), str(sb.inventory_path), incident],
                                env=env, cwd=str(Path(__file__).parents[2]), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        stack.callback(proc.kill)
        run_id = _wait_asked(jpath, incident, "rotate")
        _wait_paused(run_id)
        run_url = f"{prefect_ui}/runs/flow-run/{run_id}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            dialog = _dialog(page, run_url)
            text = dialog.inner_text()
            assert "Rotate plan" in text and "Plan hash" in text and "KICS_API_TOKEN" in text
            dialog.get_by_role("button", name="Submit").click()   # the untouched form: refused, asked again
            with ThreadPoolExecutor(1) as pool:
                pool.submit(contextvars.copy_context().run, _wait_refused, jpath, incident).result()
                pool.submit(contextvars.copy_context().run, _wait_paused, run_id).result()
            assert not Journal(jpath).entries(incident, "rotate")
            dialog = _dialog(page, run_url, want="Previous answer not accepted")
            text = dialog.inner_text()
            assert "Previous answer not accepted: no approver named" in text and "Rotate plan" in text
            rotate_hash = _shown_hash(text)
            _choose(page, dialog, "approve")                 # the decision starts at reject
            boxes = dialog.locator("textarea")
            boxes.nth(0).fill("Alice ")                      # approver (normalised to alice)
            boxes.nth(1).fill("confirmed exposure, rotate")  # reason
            boxes.nth(2).fill(rotate_hash)                   # the plan hash read above
            page.screenshot(path=str(tmp_path / "rotate-gate.png"))
            dialog.get_by_role("button", name="Submit").click()

            # the manual checklist item (a vendor API key) is confirmed by its owner through the API
            # (Prefect's sync helpers return coroutines inside Playwright's event loop: ask from a plain thread)
            with ThreadPoolExecutor(1) as pool:
                shown = pool.submit(contextvars.copy_context().run, _wait_for_pause_text, run_id).result()
                if "Manual rotation" not in shown:
                    proc.kill()
                    out = proc.communicate()[0]
                    (Path("/tmp") / "wt14-browser-flow.log").write_text(out)
                    raise AssertionError(f"no manual-rotation pause: {shown[:300]}")
                pool.submit(contextvars.copy_context().run, resume_flow_run, run_id,
                            {"rotated": True, "who": "carol", "note": "vendor portal"}).result()

            run_id = _wait_asked(jpath, incident, "purge")
            _wait_paused(run_id)
            dialog = _dialog(page, run_url)
            purge_text = dialog.inner_text()
            assert "Purge plan" in purge_text
            assert dialog.locator(".p-select-button__value").first.inner_text() == "reject"  # nothing approves by default
            boxes = dialog.locator("textarea")
            boxes.nth(0).fill("bob")
            boxes.nth(1).fill("change freeze")
            boxes.nth(2).fill(_shown_hash(purge_text))
            dialog.get_by_role("button", name="Submit").click()
            browser.close()
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]
        assert out.strip().splitlines()[-1] == "COMPLETED", out[-3000:]
        rotated = [e for e in Journal(jpath).entries(incident, "rotate") if e.action == "rotate" and e.status == "done"]
        assert len(rotated) >= 4
        assert not [e for e in Journal(jpath).entries(incident, "purge") if e.action == "delete-manifest"]
        appr = {e.target: e for e in Journal(jpath).entries(incident, "approval")}
        assert (appr["rotate"].status, appr["rotate"].approver) == ("done", "alice")
        assert (appr["purge"].status, appr["purge"].approver) == ("failed", "bob")
        from integrations.registry import RegistryClient

        with RegistryClient(sb.registry.host, base_url=sb.registry.base_url) as reg:
            assert reg.exists(REPO, sb.attacker["latest"].digest)
