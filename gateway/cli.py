"""The ``gateway`` command: serve, config show, migrate, import, demo-data, dimse, worker, forwards,
token, auth-keys, audit, migrate-backends, metadata-table, sync-share-state, export-sidecars, import-prj.
Every command that touches the stores gets them from :meth:`gateway.services.Services.build`."""
from __future__ import annotations

import gc
import json
import logging
import os
import sys
from pathlib import Path

import click

from auth.audit import audit_context, record_json
from auth.local import LocalIssuer, LocalKeyStore, key_dir, parse_ttl
from auth.signing import rotate_generated_keys
from gateway.config import SETTINGS, SettingsError, load_settings
from gateway.dimse.supervisor import ChildGroup, ChildSupervisor
from gateway.errors import BadRequest, GatewayError
from gateway.logs import configure_logging
from gateway.services import Services
from gateway.services.jobs import job_summary
from gateway.services.migrate import StoreMigration
from gateway.synthetic import write_cbct
from gateway.times import parse_time
from gateway.worker import JobWorker
from storage.errors import StorageError
from storage.records import AuditQuery

logger = logging.getLogger(__name__)


def _settings():
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _services(settings, *, plugins: bool = True) -> Services:
    """The core services (stores migrated); what the CLI stores is forwarded like the rest."""
    try:
        return Services.build(settings, plugins=plugins)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


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
    try:
        kinds = JobWorker.for_services(services).kinds
    finally:
        services.close()

    from gunicorn.app.base import BaseApplication

    class GatewayApplication(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings['server.host']}:{settings['server.port']}")
            self.cfg.set("workers", settings["server.workers"])
            self.cfg.set("threads", settings["server.threads"])
            self.cfg.set("worker_class", "gateway.http_worker.GatewayWorker")  # gthread, JSON errors
            # gunicorn believes X-Forwarded-Proto from loopback by default; the app's
            # server.trusted_proxies (gateway.proxies) is the one place that decides.
            self.cfg.set("secure_scheme_headers", {})
            self.cfg.set("limit_request_line", settings["server.max_request_line"])
            self.cfg.set("limit_request_field_size", settings["server.max_header_bytes"])
            self.cfg.set("limit_request_fields", settings["server.max_headers"])
            self.cfg.set("timeout", settings["server.timeout"])
            # gunicorn's 2 s default closes idle connections under clients and balancers that
            # reuse them (a request then meets a closed socket).
            self.cfg.set("keepalive", settings["server.keepalive"])
            self.cfg.set("graceful_timeout", 30)
            self.cfg.set("accesslog", None)  # the app writes the access lines (gateway.access)
            self.cfg.set("errorlog", "-")
            self.cfg.set("logger_class", "gateway.http_worker.GatewayLogger")
            self.cfg.set("child_exit", _worker_exited)
            self.cfg.set("loglevel", settings["log.level"].lower())
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn >= 25 opens one control socket per user at a fixed path, which
                # several gateways on one machine would fight over.
                self.cfg.set("control_socket_disable", True)

        def load(self):
            from gateway.app import (
                create_app,  # in each worker, after the fork: the master has no app
            )

            app = create_app(load_settings())
            # Everything built so far (modules, pydicom's dictionaries, the app) lives as long as
            # the worker: out of the collector's way, a full collection no longer walks it. It
            # was the p99 of QIDO (45 ms, against 3 ms at p50, for the 101-study OHIF list).
            gc.collect()
            gc.freeze()
            return app

    configure_logging(settings["log.level"], settings["log.format"])  # gunicorn's master logs through it
    banner = (f"DICOMweb at http://{settings['server.host']}:{settings['server.port']}/dicom-web "
              f"(API docs: /api/docs); data in {settings.data_dir}\n{_token_hint(settings)}")
    if settings["log.format"] == "json":  # every line a JSON object, for the log shipper
        logging.getLogger("gateway.cli").info("%s", banner)
    else:
        click.echo(banner, err=True)
    from gateway import metrics

    metrics.prepare_multiprocess(settings.data_dir)  # before any worker or child starts
    child = _child(settings, kinds)
    try:
        GatewayApplication().run()
    finally:
        if child is not None:
            child.stop()


def _worker_exited(server, worker) -> None:
    """gunicorn's child_exit hook."""
    from gateway import metrics

    metrics.process_exited(worker.pid)


def _token_hint(settings) -> str:
    """How to get a token, printed when the server starts (every request needs one)."""
    if settings["auth.provider"] == "local":
        return ("Every request needs a bearer token. Get one with:\n"
                "  TOKEN=$(gateway token --clinic default --user me --role doctor --ttl 8h)\n"
                "  curl -H \"Authorization: Bearer $TOKEN\" "
                f"http://{settings['server.host']}:{settings['server.port']}/dicom-web/studies")
    return (f"Every request needs a bearer token of {settings['auth.provider']} "
            f"(issuer {settings['auth.oidc_issuer'] or '-'}, audience {', '.join(settings['auth.oidc_audience']) or '-'})")


def _child(settings, kinds: list[str]):
    """The DIMSE listener (``dimse.enabled``) and the job worker (``worker.embedded``) beside the
    HTTP server, in one child process; or the job worker alone when some kind of job has work
    (forwarding rules are set)."""
    embedded = settings["worker.embedded"]
    if settings["dimse.enabled"]:
        count = settings["dimse.listeners"]
        # The job worker runs in the first listener process only.
        return ChildGroup([ChildSupervisor(["dimse"] + ([] if embedded and i == 0 else ["--no-worker"]),
                                           name="DIMSE listener" + (f" {i + 1}/{count}" if count > 1 else ""))
                           for i in range(count)]).start()
    if kinds and embedded:
        return ChildSupervisor(["worker"], name="job worker").start()
    return None


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


@config.command("example")
def config_example() -> None:
    """Print a gateway.toml of every setting at its default, each with its help."""
    from gateway.config import example_toml

    click.echo(example_toml(), nl=False)


@main.command()
def migrate() -> None:
    """Apply pending index schema migrations."""
    services = _services(_settings(), plugins=False)
    applied = services.migrations
    services.close()
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


@main.command("import")
@click.argument("paths", nargs=-1, required=True)
@click.option("--clinic", default="default", show_default=True, help="the clinic the instances are stored for")
@click.option("--jobs", type=click.IntRange(1, 64), default=min(4, os.cpu_count() or 1), show_default=True,
              help="processes that store at once (one per 1,000 files at most)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def import_(paths: tuple[str, ...], clinic: str, jobs: int, quiet: bool) -> None:
    """Store every DICOM file under PATHS (files, folders, DICOMDIR trees) through the ingest path.

    Re-running it is harmless: identical instances count as duplicates.
    """
    from gateway.importer import import_files

    settings = _settings()
    _services(settings).close()  # settings and stores checked (and migrated) before any work
    files = list(_walk(paths))
    with _progress(len(files), "file", quiet) as bar:
        report = import_files(files, clinic, jobs=jobs, build_services=lambda: _services(settings),
                              progress=bar.update)
    for line in report.rejected:
        click.echo(f"rejected {line}", err=True)
    click.echo(", ".join(f"{n} {k}" for k, n in report.counts.items()))
    if report.counts["rejected"]:
        sys.exit(1)


@main.command("demo-data")
@click.argument("folder")
@click.option("--slices", default=500, show_default=True, help="number of CBCT slices")
@click.option("--size", default=512, show_default=True, help="rows and columns of each slice")
def demo_data(folder: str, slices: int, size: int) -> None:
    """Write a synthetic CBCT series (no patient data) into FOLDER."""
    paths = write_cbct(Path(folder), n_slices=slices, size=size)
    click.echo(f"wrote {len(paths)} files to {folder}")


@main.command()
@click.option("--host", help="bind address (setting dimse.host)")
@click.option("--port", type=int, help="DIMSE port (setting dimse.port)")
@click.option("--ae-title", help="AE title (setting dimse.ae_title)")
@click.option("--no-worker", "--no-forward", "no_worker", is_flag=True,
              help="do not run the job worker (forwarding...) in this process")
@click.option("--parent-pid", type=int, hidden=True, help="stop when this process is gone")
def dimse(host, port, ae_title, no_worker, parent_pid) -> None:
    """Run the DIMSE listener (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) and the job worker.

    Peers, destinations and forwarding rules come from the dimse.* and forward.* settings.
    Stops on SIGTERM or Ctrl-C; exits with 3 when the port cannot be bound.
    """
    for name, value in (("dimse.host", host), ("dimse.port", port), ("dimse.ae_title", ae_title)):
        if value is not None:
            os.environ["GATEWAY_" + name.upper().replace(".", "__")] = str(value)
    _run_listener(listen=True, work=not no_worker, parent_pid=parent_pid)


def _run_listener(*, listen: bool, work: bool = True, kinds: list[str] | None = None,
                  parent_pid: int | None = None) -> None:
    settings = _settings()
    from gateway.dimse.listener import (
        run,  # pynetdicom: only the commands that run DIMSE load it
    )

    configure_logging(settings["log.level"], settings["log.format"])
    try:
        code = run(settings, listen=listen, work=work, kinds=kinds, parent_pid=parent_pid, announce=click.echo)
    except (SettingsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command()
@click.option("--kind", "kinds", multiple=True, help="only jobs of this kind (repeatable), e.g. forward")
@click.option("--parent-pid", type=int, hidden=True, help="stop when this process is gone")
def worker(kinds: tuple[str, ...], parent_pid) -> None:
    """Run the job worker alone: the jobs of every kind (or of --kind), until SIGTERM.

    Start as many as wanted, on any machine that shares the index database: each job runs in
    one worker at a time, and a dead worker's jobs are taken over.
    """
    _run_listener(listen=False, kinds=list(kinds) or None, parent_pid=parent_pid)


def _when(ms: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


FORWARD = "forward"  # the job kind of the forwarding plugin


@main.group(invoke_without_command=True)
@click.option("--failed", is_flag=True, help="only forwards that gave up")
@click.option("--clinic", help="only this clinic's forwards")
@click.option("--limit", default=100, show_default=True, help="most forwards listed")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def forwards(ctx, failed: bool, clinic: str | None, limit: int, as_json: bool) -> None:
    """List queued forwards (pending and failed). Subcommands: retry, run."""
    if ctx.invoked_subcommand is not None:
        return
    services = _services(_settings(), plugins=False)
    try:
        items = services.jobs.list_jobs(kind=FORWARD, status="failed" if failed else None, clinic_id=clinic,
                                        limit=limit)
        counts = services.jobs.counts(kind=FORWARD, clinic_id=clinic)
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps({"counts": {"pending": counts["pending"] + counts["running"], "failed": counts["failed"]},
                               "items": [job_summary(i) for i in items]}, indent=2))
        return
    click.echo(f"{counts['pending'] + counts['running']} pending, "
               f"{counts['failed']} failed")
    for item in items:
        due = "-" if item.status == "failed" else _when(item.next_attempt_at)
        click.echo(f"{item.id:>6} {item.status:<7} {item.payload.get('destination', '?'):<16} "
                   f"attempts={item.attempts:<3} next={due} sop={item.payload.get('sop_uid')} clinic={item.clinic_id}"
                   + (f" error={item.last_error}" if item.last_error else ""))


@forwards.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_failed", is_flag=True, help="every failed forward")
def forwards_retry(ids: tuple[int, ...], all_failed: bool) -> None:
    """Send failed forwards again (by id, or --all), from the first attempt."""
    if not ids and not all_failed:
        raise click.UsageError("give forward ids or --all")
    services = _services(_settings(), plugins=False)
    try:
        count = services.jobs.retry(kind=FORWARD, ids=None if all_failed else list(ids))
    finally:
        services.close()
    click.echo(f"{count} forward(s) pending again")


@forwards.command("run")
@click.option("--parent-pid", type=int, hidden=True, help="stop when this process is gone")
def forwards_run(parent_pid) -> None:
    """Run the job worker for forwards alone (no listener), e.g. on a worker machine."""
    _run_listener(listen=False, kinds=[FORWARD], parent_pid=parent_pid)


@main.command()
@click.option("--clinic", required=True, help="the clinic the token acts for (clinicId claim)")
@click.option("--user", required=True, help="the user it names (sub claim)")
@click.option("--role", "roles", multiple=True, required=True,
              help="doctor, staff, lab, admin, support or patient (repeatable)")
@click.option("--ttl", default="8h", show_default=True, help="lifetime: 8h, 30m, 2d, or seconds")
def token(clinic: str, user: str, roles: tuple[str, ...], ttl: str) -> None:
    """Print a bearer token of the local issuer (auth.provider = local).

    Use it as `Authorization: Bearer <token>`. The signing key is created on first use in
    auth.key_dir (default <data_dir>/auth).
    """
    settings = _settings()
    if settings["auth.provider"] != "local":
        click.echo(f"warning: auth.provider is {settings['auth.provider']!r}: this gateway does not accept "
                   "local tokens", err=True)
    try:
        issuer = LocalIssuer.from_settings(settings)
        click.echo(issuer.issue(user=user, clinic=clinic, roles=list(roles), ttl=parse_ttl(ttl)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.group("auth-keys", invoke_without_command=True)
@click.pass_context
def auth_keys(ctx) -> None:
    """List the local issuer's signing keys (first = signing). Subcommands: rotate, retire."""
    if ctx.invoked_subcommand is not None:
        return
    import time

    settings = _settings()
    store = LocalKeyStore(key_dir(settings), algorithm=settings["auth.local_algorithm"])
    for i, key in enumerate(store.load()):
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created_at))
        click.echo(f"{key.kid}  {key.alg}  created {created}" + ("  (signing)" if i == 0 else ""))


@auth_keys.command("rotate")
@click.option("--url-signing", is_flag=True, help="rotate the generated URL-signing key instead")
def auth_keys_rotate(url_signing: bool) -> None:
    """Make a new key the signing key; the old ones still verify until retired. Running
    gateways pick the new key up by themselves (tokens: on the first unknown kid)."""
    settings = _settings()
    if url_signing:
        if settings["auth.url_signing_keys"]:
            raise click.ClickException("auth.url_signing_keys is set: rotate by editing it (new key first)")
        click.echo(f"new URL-signing key {rotate_generated_keys(key_dir(settings))}; restart the gateway to sign "
                   "with it")
        return
    key = LocalKeyStore(key_dir(settings), algorithm=settings["auth.local_algorithm"]).rotate()
    click.echo(f"new signing key {key.kid} ({key.alg})")


@auth_keys.command("retire")
@click.argument("kid")
def auth_keys_retire(kid: str) -> None:
    """Stop accepting tokens signed with KID."""
    settings = _settings()
    try:
        LocalKeyStore(key_dir(settings), algorithm=settings["auth.local_algorithm"]).retire(kid)
    except KeyError:
        raise click.ClickException(f"no key {kid}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"retired {kid}")


@main.command("audit")
@click.option("--clinic", help="records of this clinic (as actor or resource owner)")
@click.option("--user", help="records of this user")
@click.option("--action", help="login, search, read, store, delete, share, revoke, sign, admin")
@click.option("--outcome", help="ok, denied, not_found")
@click.option("--since", help="ISO 8601 time or ms since the epoch")
@click.option("--limit", default=100, show_default=True)
@click.option("--jsonl", is_flag=True, help="print JSON lines, oldest first")
def audit(clinic, user, action, outcome, since, limit, jsonl) -> None:
    """Read the audit log (every clinic: this is the operator's view)."""
    try:
        since_ms = parse_time(since, "since")
    except BadRequest as exc:
        raise click.ClickException(exc.message) from None
    services = _services(_settings(), plugins=False)
    query = AuditQuery(clinic_id=clinic, user_id=user, action=action, outcome=outcome, since_ms=since_ms,
                       limit=limit, newest_first=not jsonl)
    try:
        records = services.audit.search(query)
    finally:
        services.close()
    for record in records:
        body = record_json(record)
        if jsonl:
            click.echo(json.dumps(body, ensure_ascii=False))
        else:
            click.echo(f"{body['time']} {record.outcome:<9} {record.action:<7} {record.user_id or '-'}"
                       f"@{record.clinic_id or '-'} {record.resource} {record.client or ''} "
                       f"{record.detail or ''}".rstrip())


@main.command("migrate-backends")
@click.option("--source-data-dir", type=click.Path(exists=True, file_okay=False),
              help="the embedded deployment to copy from: its storage.data_dir (SQLite index + blob folder)")
@click.option("--source-config", type=click.Path(exists=True, dir_okay=False),
              help="or a settings file (TOML) describing the source stores")
@click.option("--clinic", "clinics", multiple=True, help="copy only this clinic (repeatable)")
@click.option("--jobs", default=4, show_default=True, help="instances copied in parallel")
@click.option("--no-readback", is_flag=True, help="skip reading every copied object back to hash it "
                                                  "(the index sha256 is still compared)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def migrate_backends(source_data_dir, source_config, clinics, jobs, no_readback, quiet) -> None:
    """Copy every instance from a source deployment to the configured stores (e.g. embedded
    SQLite + folder to PostgreSQL + S3), checking the sha256 of each, and every image metadata
    record with its versions and history (e.g. to DynamoDB); safe to re-run.

    The target is the effective settings (environment, gateway.toml / GATEWAY_CONFIG); the
    source is given by --source-data-dir or --source-config, read without the environment.
    Exits 1 if any instance or record could not be copied or verified.
    """
    if bool(source_data_dir) == bool(source_config):
        raise click.UsageError("give exactly one of --source-data-dir and --source-config")
    target = _settings()
    try:
        if source_config:
            source = load_settings(config_file=source_config, environ={})
        else:
            source = load_settings(overrides={"storage.data_dir": source_data_dir, "storage.index_backend": "sqlite",
                                              "storage.blob_backend": "filesystem"}, environ={})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    same = all(source[n] == target[n] for n in ("storage.index_backend", "storage.blob_backend",
                                                 "storage.metadata_backend", "storage.dynamodb_table")) and \
        source.data_dir == target.data_dir and source["storage.postgres_dsn"] == target["storage.postgres_dsn"] \
        and source["storage.s3_bucket"] == target["storage.s3_bucket"]
    if same:
        raise click.ClickException("the source and the target are the same stores")
    # No plugins on either side: the copies are not new instances (no forwarding, no previews).
    source_services = _services(source, plugins=False)
    try:
        target_services = _services(target, plugins=False)
    except click.ClickException:
        source_services.close()
        raise
    migration = StoreMigration(source_services, target_services, verify_blobs=not no_readback, jobs=jobs)
    click.echo(f"copying from {source['storage.index_backend']} + {source['storage.blob_backend']} + "
               f"{source['storage.metadata_backend']} metadata to {target['storage.index_backend']} + "
               f"{target['storage.blob_backend']} + {target['storage.metadata_backend']} metadata", err=True)
    count = 0

    def progress(record) -> None:
        nonlocal count
        count += 1
        if not quiet and count % 100 == 0:
            click.echo(f"  {count} instances ...", err=True)

    try:
        report = migration.run(clinics=list(clinics) or None, progress=progress)
    finally:
        source_services.close()
        target_services.close()
    for what, why in report.failed:
        click.echo(f"failed {what}: {why}", err=True)
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)



# --- image metadata ---------------------------------------------------------------------------

@main.group("metadata-table")
def metadata_table() -> None:
    """The DynamoDB table of the dynamodb metadata store (storage.metadata_backend = dynamodb)."""


@metadata_table.command("create")
def metadata_table_create() -> None:
    """Create the table (storage.dynamodb_table) with its indexes, on-demand capacity; harmless when it exists."""
    services = _services(_settings(), plugins=False)
    try:
        create = getattr(services.metadata_store, "create_table", None)
        if create is None:
            raise click.ClickException(f"storage.metadata_backend is {services.settings['storage.metadata_backend']!r}"
                                       ": its tables are made by 'gateway migrate'")
        try:
            created = create()
            added = [] if created else services.metadata_store.add_missing_indexes()
        except StorageError as exc:
            raise click.ClickException(str(exc)) from None
        table = services.settings["storage.dynamodb_table"]
        click.echo(f"created table {table}" if created else f"table {table} exists already"
                   + (f"; added index {', '.join(added)} (then run 'gateway sync-share-state')" if added else ""))
    finally:
        services.close()


@main.command("sync-share-state")
@click.option("--clinic", "clinics", multiple=True, help="only this clinic (repeatable; default: every clinic)")
def sync_share_state(clinics: tuple[str, ...]) -> None:
    """Mirror the share state of every image metadata record again from the shares. Shares
    mirror themselves when made and revoked; run this once after upgrading to a version that
    mirrors them, or after a mirror write failed (it is logged). Harmless to re-run."""
    services = _services(_settings(), plugins=False)
    try:
        for clinic in clinics or services.index.clinic_ids():
            try:
                studies, records = services.metadata.sync_share_state(clinic)
            except (GatewayError, StorageError) as exc:
                raise click.ClickException(f"clinic {clinic}: {exc}") from None
            click.echo(f"clinic {clinic}: share state of {records} record(s) of {studies} study(ies) mirrored")
    finally:
        services.close()


def _progress(total: int | None, unit: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True)


@main.command("export-sidecars")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clinic", default="default", show_default=True, help="the clinic whose records are written")
@click.option("--study", help="only this study's records")
@click.option("--quiet", is_flag=True, help="no progress bar")
def export_sidecars_(folder: Path, clinic: str, study: str | None, quiet: bool) -> None:
    """Write every image metadata record as a JSON sidecar under FOLDER, beside where the zip
    download puts the image ({PatientID}/{StudyDate}_{Study}/{SeriesNumber}_{Series}/0001.json)."""
    from gateway.services.sidecars import export_sidecars

    services = _services(_settings(), plugins=False)
    try:
        with audit_context(client=f"cli:{os.getuid()}", door="cli"), _progress(None, "file", quiet) as bar:
            report = export_sidecars(services.metadata, clinic, folder, study=study, progress=bar.update)
    finally:
        services.close()
    for line in report.lines:
        click.echo(line, err=True)
    click.echo(report.summary(("written", "failed")))
    if report.counts["failed"]:
        sys.exit(1)


@main.command("import-prj")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--clinic", default="default", show_default=True, help="the clinic whose images they are")
@click.option("--jobs", default=4, show_default=True, type=click.IntRange(1, 64), help="files converted at once")
@click.option("--quiet", is_flag=True, help="no progress bar")
def import_prj(paths: tuple[Path, ...], clinic: str, jobs: int, quiet: bool) -> None:
    """Convert the legacy viewer's .prj sidecars under PATHS (beside their images, same name) into
    image metadata records of images already stored (gateway import first). Re-running changes
    nothing: what was imported is skipped, and an existing record is never overwritten."""
    from gateway.services.sidecars import import_prj_files, prj_files

    try:
        files = list(prj_files(paths))
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="PATHS") from None
    services = _services(_settings(), plugins=False)
    try:
        with audit_context(client=f"cli:{os.getuid()}", door="cli"), _progress(len(files), "file", quiet) as bar:
            report = import_prj_files(services.metadata, clinic, files, jobs=jobs, progress=bar.update)
    finally:
        services.close()
    for line in report.lines:
        click.echo(line, err=True)
    click.echo(report.summary(("converted", "skipped", "failed")))
    if report.counts["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
