"""``gateway-client``: upload folders of DICOM files as a few streamed zips at once, download studies
back, follow an upload. Talks to a gateway over HTTP only (:mod:`proprietary.client`).

The gateway and the token come from ``--url``/``--token``, else ``GATEWAY_URL``/``GATEWAY_TOKEN``,
else the file ``~/.config/gateway-client.toml`` (``url = "..."``, ``token = "..."``;
``GATEWAY_CLIENT_CONFIG`` names another). Exit status 1 when anything was rejected or failed.
"""
from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import click
from tqdm import tqdm

from proprietary.client import PARALLEL, ClientError, GatewayClient, files_to_send

DEFAULT_URL = "http://127.0.0.1:8042"


def _config() -> dict:
    path = Path(os.environ.get("GATEWAY_CLIENT_CONFIG", Path.home() / ".config" / "gateway-client.toml"))
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None


@click.group()
@click.option("--url", envvar="GATEWAY_URL", help=f"the gateway (default {DEFAULT_URL})")
@click.option("--token", envvar="GATEWAY_TOKEN", help="bearer token (e.g. from 'gateway token')")
@click.option("--retries", default=5, show_default=True, help="attempts after a dropped connection")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.pass_context
def main(ctx, url, token, retries, quiet) -> None:
    """Move whole studies in and out of a dental PACS gateway."""
    ctx.obj = {"url": url, "token": token, "retries": retries, "quiet": quiet}


def _client(ctx) -> GatewayClient:
    """Made when a command needs it (so that --help needs no token)."""
    config = _config()
    token = ctx.obj["token"] or config.get("token")
    if not token:
        raise click.UsageError("no token: give --token, set GATEWAY_TOKEN, or put token = \"...\" in "
                               "~/.config/gateway-client.toml")
    return GatewayClient(ctx.obj["url"] or config.get("url") or DEFAULT_URL, token, retries=ctx.obj["retries"])


def _bar(ctx, total: int | None, what: str) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what, file=sys.stderr,
                disable=ctx.obj["quiet"], leave=False)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--study", help="refuse instances of any other study")
@click.option("--expected", type=int, help="the number of instances the upload must hold to complete")
@click.option("--no-complete", is_flag=True, help="leave the upload open (send more later)")
@click.option("--parallel", type=click.IntRange(1, 8), default=PARALLEL, show_default=True,
              help="archives sent at once (the files are split into this many zips)")
@click.pass_context
def upload(ctx, paths, study, expected, no_complete, parallel) -> None:
    """Upload the files under PATHS (folders, files) as one upload of a few zips sent at once,
    resuming after dropped connections."""
    client = _client(ctx)
    total = sum(path.stat().st_size for _, path in files_to_send(paths))
    with _bar(ctx, total, "upload") as bar:
        try:
            report = client.upload(paths, study=study, expected=expected, complete=not no_complete,
                                   progress=bar.update, parallel=parallel)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
    counts = report.counts
    click.echo(f"upload {report.upload_id} ({report.status}): " + ", ".join(f"{counts.get(k, 0)} {k}" for k in (
        "stored", "duplicate", "replaced", "rejected", "skipped", "sidecar")) +
        (f"; {report.attempts} attempts" if report.attempts > 1 else ""))
    for entry in report.rejected:
        click.echo(f"rejected {entry['name']}: {entry['reason']}", err=True)
    if report.error:
        click.echo(f"refused: {report.error.get('message')} (rule {report.error.get('rule')})", err=True)
    for study_uid in report.studies:
        click.echo(f"study {study_uid}")
    sys.exit(1 if report.rejected or report.error else 0)


@main.command()
@click.argument("study")
@click.option("--series", help="only this series")
@click.option("--slices", help="only these slices of the series, by position along the slice axis: a-b (1-based)")
@click.option("-o", "--output", "output", default=".", show_default=True, type=click.Path(file_okay=False),
              help="folder to write into")
@click.option("--unzip", is_flag=True, help="unpack the archive into OUTPUT/<name>/")
@click.option("--deflate", is_flag=True, help="ask for a compressed archive (no resume, no size in advance)")
@click.pass_context
def download(ctx, study, series, slices, output, unzip, deflate) -> None:
    """Download a study (or series, or slice range) as a zip of the stored originals."""
    client = _client(ctx)
    with _bar(ctx, None, "download") as bar:
        def progress(have: int, total: int | None) -> None:
            if total and bar.total != total:
                bar.total = total
            bar.update(have - bar.n)

        try:
            path = client.download(study, output, series=series, slices=slices, deflate=deflate, unzip=unzip,
                                   progress=progress)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(str(path))


@main.command()
@click.argument("upload_id")
@click.option("--json", "as_json", is_flag=True, help="the whole listing as JSON")
@click.pass_context
def status(ctx, upload_id, as_json) -> None:
    """An upload's state and the outcome of every entry."""
    try:
        listing = _client(ctx).status(upload_id)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    click.echo(f"upload {listing['id']}: {listing['status']}, " +
               ", ".join(f"{n} {k}" for k, n in listing["counts"].items() if n))
    for entry in listing["entries"]:
        click.echo(f"  {entry['outcome']:<9} {entry['name']}" + (f"  ({entry['reason']})" if entry["reason"] else ""))


@main.command()
@click.argument("upload_id")
@click.pass_context
def events(ctx, upload_id) -> None:
    """Follow an upload's events (one JSON line each) until it is complete or expired."""
    try:
        for event, data in _client(ctx).events(upload_id):
            click.echo(json.dumps({"event": event, **data}))
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
