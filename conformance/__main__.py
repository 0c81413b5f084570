"""``python -m conformance``: run the conformance suite against a DICOMweb and/or DIMSE server.

    python -m conformance --dicomweb http://127.0.0.1:8042/dicom-web \\
        --dimse DENTALGW@127.0.0.1:11112 [--calling-aet CONFSUITE] [--token T] \\
        [--move-scp CONFSCP@127.0.0.1:11113] [--report report.md] [--json report.json] \\
        [--only stow,qido,wado,cors,ohif,dimse]

Exit status: 0 when no check failed, 1 when one did, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys

from conformance.report import FAIL, PASS
from conformance.runner import Options, run
from conformance.suites import SUITES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m conformance", description="Run the DICOM conformance suite against a DICOMweb server and/or a DIMSE peer.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dicomweb", metavar="URL", help="DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--dimse", metavar="AET@HOST:PORT", help="DIMSE peer to test (called AE title, host, port)")
    p.add_argument("--calling-aet", default="CONFSUITE", help="the suite's AE title (the target must allow it)")
    p.add_argument("--move-scp", metavar="AET@HOST:PORT",
                   help="where the suite's own storage SCP listens as C-MOVE destination (the target must know it); "
                        "without it the C-MOVE checks do not apply")
    p.add_argument("--unknown-aet", default="CONFUNKNOWN", help="a calling AE title the target does not know")
    p.add_argument("--token", help="bearer token: sent as 'Authorization: Bearer T' on every request (but CORS "
                                   "preflights: browsers send no credentials there, so neither does the suite)")
    p.add_argument("--only", help=f"comma-separated suites ({', '.join(SUITES)})")
    p.add_argument("--report", metavar="FILE", help="write a markdown report")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--keep", action="store_true", help="do not DELETE the test studies afterwards")
    p.add_argument("--seed", type=int, help="seed of the run's UID root and names (default: random)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary on the terminal")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.dicomweb and not args.dimse:
        p.error("give --dicomweb URL and/or --dimse AET@HOST:PORT")
    only = tuple(s.strip() for s in (args.only or "").split(",") if s.strip())
    unknown = [s for s in only if s not in SUITES]
    if unknown:
        p.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    args.only = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pynetdicom", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.CRITICAL)

    def progress(result) -> None:
        if args.quiet:
            return
        mark = {PASS: "PASS", FAIL: "FAIL"}.get(result.outcome, "N/A ")
        print(f"{mark} {result.id:<44} {result.requirement}", flush=True)
        if result.outcome != PASS and result.detail:
            print(f"       {result.detail}", flush=True)

    options = Options(dicomweb=args.dicomweb, token=args.token, dimse=args.dimse, calling_aet=args.calling_aet,
                      move_scp=args.move_scp, unknown_aet=args.unknown_aet, only=args.only, cleanup=not args.keep,
                      seed=args.seed, timeout=args.timeout)
    report = run(options, progress=progress)
    if args.report:
        with open(args.report, "w") as fh:
            fh.write(report.to_markdown())
    if args.json:
        report.write_json(args.json)
    for note in report.notes:
        print(f"note: {note}")
    print(report.summary_line())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
