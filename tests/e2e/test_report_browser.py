"""The HTML incident report rendered by a real browser: Debian's headless ``chromium``.

Proves the page renders on its own (no network: background networking, component
updates and sync are off, and the page's CSP forbids loading anything): the
screenshot is a real picture (not empty, not one colour, with the timeline's
colours in it) and the DOM the browser built has the timeline's elements.
Skips with a clear message when chromium is not installed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tasks.report.html import VERDICT_COLOURS, write_report
from tests.report_fixtures import sample_report

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the browser test needs it")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=True)


def _png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) with the standard library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert ihdr is not None
    width, height, depth, colour, _, _, interlace = ihdr
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {ihdr}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    i = 0
    for _ in range(height):
        ftype, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 0xFF
            elif ftype == 2:
                line[x] = (line[x] + b) & 0xFF
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        pixels.extend(tuple(line[x:x + 3]) for x in range(0, stride, bpp))
        prev = line
    return width, height, pixels


class _Classes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.found.append((tag, a.get("id") or "", a.get("class") or ""))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    return write_report(sample_report(), tmp_path_factory.mktemp("report") / "report.html")


def test_screenshot_is_a_real_picture(report_file: Path, tmp_path: Path):
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,1000", report_file.as_uri())
    data = shot.read_bytes()
    assert len(data) > 10_000
    width, height, pixels = _png_pixels(data)
    assert (width, height) == (1400, 1000)
    colours = set(pixels)
    assert len(colours) > 50, "the screenshot is (nearly) a single colour"
    # the timeline was drawn: the confirmed job's red and the network hits' violet are on screen
    assert _rgb(VERDICT_COLOURS["confirmed"]) in colours
    assert (0x82, 0x50, 0xDF) in colours


def test_browser_dom_has_the_timeline(report_file: Path, tmp_path: Path):
    dom = _chromium(tmp_path, "--dump-dom", report_file.as_uri()).stdout.decode("utf-8")
    p = _Classes()
    p.feed(dom)
    ids = {i for _, i, _ in p.found}
    classes = [set(c.split()) for _, _, c in p.found]
    assert "timeline" in ids and "attack-window" in ids
    assert sum(1 for c in classes if {"job", "confirmed"} <= c) == 1
    assert sum(1 for c in classes if {"job", "probable"} <= c) == 1
    assert sum(1 for c in classes if {"job", "clear"} <= c) == 1
    assert sum(1 for c in classes if "hit" in c) == 2
    assert sum(1 for c in classes if "action" in c) == 5
    assert sum(1 for c in classes if "window" in c) == 1
    assert not any(tag == "script" for tag, _, _ in p.found)  # the hostile job name stayed text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_browser_draws_each_affected_tags_timeline(tmp_path: Path):
    """Issue 19: the tag timeline lane (known digest, malicious digest, hole) renders in the real browser."""
    from digestguard.advisory import load_advisory
    from tests.unit.test_report_timelines import _timeline

    report = sample_report().with_timelines([_timeline()], load_advisory("kics-2026-04"))
    page = write_report(report, tmp_path / "timelines.html")
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout.decode("utf-8")
    p = _Classes()
    p.feed(dom)
    kinds = [c.split()[1] for tag, _, c in p.found if tag == "rect" and c.startswith("tag-interval")]
    assert kinds == ["known", "malicious", "hole", "known"]
    assert "tag-timeline" in dom and "docker.io/checkmarx/kics:latest" in dom
