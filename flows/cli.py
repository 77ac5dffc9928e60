"""``digestguard``: the on-call's command line.

Thin on purpose: it parses arguments, calls the same functions the flows call
(``digestguard detect`` and the flow's detect stage are the same code), and
prints. Heavy imports (Prefect, vendor SDKs) happen inside the commands so
``--help`` answers at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from digestguard.errors import DigestguardError, InputError

app = typer.Typer(help="Container-image supply-chain incident playbook (Prefect).", no_args_is_help=True, add_completion=False)
advisories_app = typer.Typer(help="IOC packs: list, show, validate.", no_args_is_help=True)
app.add_typer(advisories_app, name="advisories")


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _fail(e: Exception, code: int = 2) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(code)


# ---------------------------------------------------------------------------------- advisories
@advisories_app.command("list")
def advisories_list(as_json: bool = typer.Option(False, "--json", help="one JSON object")) -> None:
    """List the shipped advisory packs."""
    from digestguard.advisory import list_packs

    packs = list_packs()
    if as_json:
        _echo_json({"advisories": [{"id": a.id, "title": a.title, "images": [i.repository for i in a.images],
                                    "window_start": a.window.start, "window_end": a.window.end} for a in packs]})
        return
    for a in packs:
        imgs = ", ".join(i.repository for i in a.images)
        typer.echo(f"{a.id:16} {imgs:32} {a.title}")


@advisories_app.command("show")
def advisories_show(advisory_id: str = typer.Argument(..., metavar="ID"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one pack: images, tags, digests, window, indicators."""
    from digestguard.advisory import load_advisory

    try:
        a = load_advisory(advisory_id)
    except InputError as e:
        _fail(e)
    if as_json:
        _echo_json(a.model_dump(mode="json"))
        return
    typer.echo(f"{a.id}: {a.title}")
    end = a.window.end.isoformat() if a.window.end else "open (no official end)"
    typer.echo(f"window: {a.window.start.isoformat()} -> {end}  [{a.window.source}]")
    for r in a.references:
        typer.echo(f"ref: {r.kind} {r.value}")
    for img in a.images:
        typer.echo(f"\nimage {img.repository}  (also: {', '.join(img.spellings()[:4])} ...)")
        typer.echo(f"  tags overwritten: {', '.join(img.tags_overwritten) or '-'}; created: {', '.join(img.tags_created) or '-'}")
        for m in img.malicious:
            what = f"{m.kind} {m.platform or ''}".strip()
            tags = f" tags={','.join(m.tags)}" if m.tags else ""
            typer.echo(f"  malicious {m.digest} ({what}){tags}  [{m.source}]")
        for kg in img.known_good:
            typer.echo(f"  known good {kg.tag or '-'}: {kg.digest or 'digest unknown'}  [{kg.source}]")
    for ind in a.network:
        typer.echo(f"indicator {ind.kind:10} {ind.value}  [{ind.source}]")
    for act in a.actions:
        safe = ", ".join(f"{s.ref}={s.commit}" for s in act.safe) or "none known"
        typer.echo(f"action {act.repository}: malicious {', '.join(act.malicious_commits)}; safe {safe}")


@advisories_app.command("validate")
def advisories_validate(file: Path = typer.Argument(..., help="a pack file (YAML)")) -> None:
    """Validate a user's own pack; exits 2 with every problem named."""
    from digestguard.advisory import load_advisory_file

    try:
        a = load_advisory_file(file)
    except InputError as e:
        _fail(e)
    typer.echo(f"{file}: ok ({a.id}, {len(a.images)} image(s), {sum(len(i.malicious) for i in a.images)} digest(s), {len(a.network)} indicator(s))")


@advisories_app.command("schema")
def advisories_schema() -> None:
    """Print the pack schema as JSON Schema."""
    from digestguard.advisory import json_schema

    _echo_json(json_schema())


# ---------------------------------------------------------------------------------- journal
@app.command("journal")
def journal_cmd(
    incident: str = typer.Argument(..., help="incident id"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="inventory file (its journal path)"),
    journal_path: Optional[Path] = typer.Option(None, "--journal", help="journal database path"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print every side effect recorded for an incident."""
    from digestguard.journal import Journal

    path = _journal_path(inventory, journal_path)
    if not path.exists():
        _fail(InputError(str(path), "no journal here (pass --journal or --inventory)"))
    j = Journal(path)
    rows = [e.as_dict() for e in j.entries(incident)]
    if as_json:
        _echo_json({"incident": incident, "actions": rows, "events": j.events(incident)})
        return
    if not rows:
        typer.echo(f"no actions journaled for {incident}")
    for r in rows:
        who = f" by {r['approver']}" if r["approver"] else ""
        err = f"  ! {r['error']}" if r["error"] else ""
        typer.echo(f"{r['started_at'] or '':29} {r['stage']:8} {r['action']:24} {r['status']:8} {r['target']}{who}{err}")


def _journal_path(inventory: Optional[Path], journal_path: Optional[Path]) -> Path:
    if journal_path:
        return journal_path
    if inventory:
        from digestguard.inventory import load_inventory

        return load_inventory(inventory).journal_path()
    return Path(".digestguard/journal.sqlite").resolve()


def main() -> None:
    """Console entry point: typed errors become one clear line and exit code 2."""
    try:
        app()
    except DigestguardError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
