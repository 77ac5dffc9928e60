"""Faults stay local in the CI-log folder reader (issue 15, point 2): a gzip bomb is not decompressed past the
cap, a symlink is never followed out of the folder, and each is an error for that file only (coverage partial)."""

from __future__ import annotations

import gzip
import os

from digestguard.advisory import load_advisory
from digestguard.inventory import Inventory
from tasks.ci_logs import MAX_LOG_BYTES, read_one_source

PULL = "2026-04-22T13:00:00Z latest: Pulling from checkmarx/kics\n"


def test_gzip_bomb_and_outside_symlink_are_refused_and_the_rest_is_read(tmp_path):
    logs = tmp_path / "ci"
    logs.mkdir()
    (logs / "good.log").write_text(PULL)
    with gzip.open(logs / "bomb.log.gz", "wb", compresslevel=9) as f:
        chunk = b"\0" * (1 << 20)
        for _ in range(MAX_LOG_BYTES // len(chunk) + 2):
            f.write(chunk)
    assert (logs / "bomb.log.gz").stat().st_size < 1 << 20
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("AWS_SECRET_ACCESS_KEY=do-not-read-me " + PULL)
    os.symlink(secret, logs / "escape.log")
    inv = Inventory.model_validate({"ci_logs": [{"name": "exported", "kind": "folder", "path": str(logs)}],
                                    "base_dir": str(tmp_path)})
    read = read_one_source(inv.ci_logs[0], inv, load_advisory("kics-2026-04"))
    assert [j.job for j in read.jobs] == ["good.log"]
    assert any("bomb.log.gz: not read: decompresses to more than 64 MiB" in e for e in read.errors), read.errors
    assert any("escape.log: a symlink, not followed" in e for e in read.errors), read.errors
    assert not any("do-not-read-me" in e for e in read.errors)
    cov = read.coverage["exported"]
    assert cov.state == "partial" and "2 item(s) not read" in cov.reason
