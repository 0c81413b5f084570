"""The ``gateway`` command: serve, config show, migrate, import, demo-data."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from gateway.config import SETTINGS, SettingsError, load_settings

logger = logging.getLogger(__name__)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def _settings():
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _services(settings):
    from gateway.services import Services
    from plugins.manager import create_plugin_manager

    return Services.build(settings, create_plugin_manager())


@click.group()
@click.version_option(package_name="dental-pacs-gateway")
def main() -> None:
    """Dental PACS gateway: DICOMweb, DIMSE and the fast API on one core."""


@main.command()
@click.option("--host", help="bind address (setting server.host)")
@click.option("--port", type=int, help="HTTP port (setting server.port)")
@click.option("--workers", type=int, help="gunicorn worker processes (setting server.workers)")
@click.option("--threads", type=int, help="threads per worker (setting server.threads)")
def serve(host, port, workers, threads) -> None:
    """Run the HTTP server under gunicorn."""
    overrides = {k: v for k, v in (("server.host", host), ("server.port", port),
                                   ("server.workers", workers), ("server.threads", threads)) if v is not None}
    for name, value in overrides.items():
        os.environ["GATEWAY_" + name.upper().replace(".", "__")] = str(value)
    settings = _settings()
    services = _services(settings)  # creates the stores and applies migrations once, before the workers
    services.close()

    from gunicorn.app.base import BaseApplication

    class GatewayApplication(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings['server.host']}:{settings['server.port']}")
            self.cfg.set("workers", settings["server.workers"])
            self.cfg.set("threads", settings["server.threads"])
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", settings["server.timeout"])
            self.cfg.set("graceful_timeout", 30)
            self.cfg.set("accesslog", None)
            self.cfg.set("errorlog", "-")
            self.cfg.set("loglevel", settings["log.level"].lower())

        def load(self):
            from gateway.app import create_app

            return create_app(load_settings())

    click.echo(f"DICOMweb at http://{settings['server.host']}:{settings['server.port']}/dicom-web "
               f"(API docs: /api/docs); data in {settings.data_dir}", err=True)
    GatewayApplication().run()


@main.group()
def config() -> None:
    """Inspect settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def config_show(as_json: bool) -> None:
    """Print the effective settings (secrets masked) and where each comes from."""
    settings = _settings()
    values = settings.masked()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    for setting in SETTINGS:
        env = "GATEWAY_" + setting.name.upper().replace(".", "__")
        click.echo(f"{setting.name} = {values[setting.name]!r}   [{settings.sources[setting.name]}; {env}]")


@main.command()
def migrate() -> None:
    """Apply pending index schema migrations."""
    settings = _settings()
    from storage import registry

    index = registry.create("index", settings["storage.index_backend"], settings)
    applied = index.migrate()
    click.echo(f"applied: {', '.join(applied)}" if applied else "index schema is up to date")


def _walk(paths: tuple[str, ...]):
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            yield path
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(dirpath) / name
        else:
            raise click.BadParameter(f"{raw} does not exist", param_hint="PATH")


def _is_part10(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


@main.command("import")
@click.argument("paths", nargs=-1, required=True)
@click.option("--quiet", is_flag=True, help="no progress bar")
def import_(paths: tuple[str, ...], quiet: bool) -> None:
    """Store every DICOM file under PATHS (files, folders, DICOMDIR trees) through the ingest path.

    Re-running it is harmless: identical instances count as duplicates.
    """
    from auth.base import EMBEDDED_PRINCIPAL

    settings = _settings()
    services = _services(settings)
    files = list(_walk(paths))
    counts = {"stored": 0, "replaced": 0, "duplicate": 0, "rejected": 0, "not DICOM": 0}
    rejected: list[str] = []
    with click.progressbar(files, label="importing", file=sys.stderr if not quiet else open(os.devnull, "w"),
                           show_pos=True) as bar:
        for path in bar:
            if not _is_part10(path):
                counts["not DICOM"] += 1
                continue
            with path.open("rb") as fh:
                staged = services.ingest.stage(fh)
            header = staged.header
            if header is not None and header.sop_class_uid == DICOMDIR_CLASS:
                staged.discard()
                counts["not DICOM"] += 1
                continue
            outcome = services.ingest.commit(staged, principal=EMBEDDED_PRINCIPAL)
            if outcome.ok:
                counts[outcome.status] += 1
            else:
                counts["rejected"] += 1
                rejected.append(f"{path}: {outcome.error.message}")
    services.close()
    for line in rejected:
        click.echo(f"rejected {line}", err=True)
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))
    if counts["rejected"]:
        sys.exit(1)


@main.command("demo-data")
@click.argument("folder")
@click.option("--slices", default=500, show_default=True, help="number of CBCT slices")
@click.option("--size", default=512, show_default=True, help="rows and columns of each slice")
def demo_data(folder: str, slices: int, size: int) -> None:
    """Write a synthetic CBCT series (no patient data) into FOLDER."""
    from gateway.synthetic import write_cbct

    paths = write_cbct(Path(folder), n_slices=slices, size=size)
    click.echo(f"wrote {len(paths)} files to {folder}")


if __name__ == "__main__":
    main()
