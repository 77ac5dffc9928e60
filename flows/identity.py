"""Who answered a gate: SSH signatures over the answer, verified the way git verifies signed commits.

``digestguard approve RUN --approver NAME --sign KEY`` signs ``(plan hash, run id, decision)`` with
``ssh-keygen -Y sign`` under the namespace :data:`NAMESPACE`; the gate verifies it with ``ssh-keygen -Y
verify`` against an allowed-signers file built from the inventory's ``approvals.approvers`` (name -> key).
A signature binds one decision on one plan of one run: it cannot be replayed on another run, another plan,
or flipped from reject to approve. Standard library only (``approve`` must stay fast).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from digestguard.errors import InputError

NAMESPACE = "digestguard-approval"


def signed_message(*, plan_hash: str, run_id: str, decision: str) -> bytes:
    """The exact bytes an approver signs."""
    return f"digestguard approval v1\nflow-run {run_id}\nplan {plan_hash}\ndecision {decision}\n".encode()


def _ssh_keygen() -> str:
    exe = shutil.which("ssh-keygen")
    if not exe:
        raise InputError("ssh-keygen", "not installed (Debian: apt-get install -y openssh-client)")
    return exe


def sign_answer(key: str, *, plan_hash: str, run_id: str, decision: str) -> str:
    """An armored SSH signature of the answer, made with the private key at ``key``."""
    if not Path(key).expanduser().is_file():
        raise InputError("--sign", f"{key}: no such key file")
    with tempfile.TemporaryDirectory(prefix="dg-sign-") as d:
        msg = Path(d) / "answer"
        msg.write_bytes(signed_message(plan_hash=plan_hash, run_id=run_id, decision=decision))
        r = subprocess.run([_ssh_keygen(), "-Y", "sign", "-q", "-f", str(Path(key).expanduser()), "-n", NAMESPACE, str(msg)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise InputError("--sign", f"ssh-keygen could not sign: {r.stderr.strip()[:300]}")
        return (Path(d) / "answer.sig").read_text()


def verify_answer(signature: str, *, principal: str, public_key: str, plan_hash: str, run_id: str, decision: str) -> bool:
    """Whether ``signature`` is ``principal``'s (holder of ``public_key``) signature of exactly this answer."""
    if not signature.strip() or not public_key.strip():
        return False
    with tempfile.TemporaryDirectory(prefix="dg-verify-") as d:
        allowed, sig = Path(d) / "allowed_signers", Path(d) / "answer.sig"
        allowed.write_text(f'"{principal}" namespaces="{NAMESPACE}" {public_key.strip()}\n')
        sig.write_text(signature if signature.endswith("\n") else signature + "\n")
        r = subprocess.run([_ssh_keygen(), "-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE, "-s", str(sig)],
                           input=signed_message(plan_hash=plan_hash, run_id=run_id, decision=decision),
                           capture_output=True, timeout=60)
        return r.returncode == 0
