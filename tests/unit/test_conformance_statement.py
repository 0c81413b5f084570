"""conformance/STATEMENT.md says what the code declares, table for table.

Each table of the statement sits between ``<!-- table:NAME -->`` and ``<!-- /table -->``;
:func:`expected_tables` builds the same rows from the code (SOP classes and roles of the
DIMSE listener, transfer syntaxes, QIDO attributes per level, error codes, frame media
types). When the code changes, print the tables to paste with
``python -m tests.unit.test_conformance_statement``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

STATEMENT = Path(__file__).resolve().parents[2] / "conformance" / "STATEMENT.md"
_TABLE = re.compile(r"<!-- table:(?P<name>[a-z0-9-]+) -->\n(?P<body>.*?)<!-- /table -->", re.S)


# --- what the code declares ------------------------------------------------------------------

def _listener_contexts():
    from gateway.config import load_settings
    from gateway.dimse.listener import build_ae

    settings = load_settings(overrides={"storage.data_dir": "/nonexistent-conformance-statement"}, environ={})
    return build_ae(settings).supported_contexts


def _matching(attr) -> str:
    """The matching kinds :func:`gateway.services.query.build_match` applies to an attribute."""
    if attr.vr in ("DA", "TM", "DT"):
        return "single, range"
    if attr.vr == "UI" or attr.keyword == "ModalitiesInStudy":
        return "single, list"
    if attr.vr in ("IS", "US"):
        return "single"
    if attr.vr == "PN":
        return "single, wildcard, fuzzy"
    return "single, wildcard"


def _name(uid: str) -> str:
    """pydicom's name of a UID, else pynetdicom's keyword (newer SOP classes pydicom lacks)."""
    from pydicom.uid import UID
    from pynetdicom import sop_class

    name = UID(uid).name
    if name != uid:
        return name
    keywords = {v: k for k, v in vars(sop_class).get("_STORAGE_CLASSES", {}).items()}
    return keywords.get(uid, uid)


def expected_tables() -> dict[str, list[tuple[str, ...]]]:
    from pydicom.uid import UID
    from pynetdicom import AllStoragePresentationContexts

    from gateway import errors
    from storage.attributes import COMPUTED, DEFAULT_RETURN, INDEXED
    from gateway.dimse.scu import TRANSFER_SYNTAXES, UNCOMPRESSED
    from gateway.imaging.pixeldata import MEDIA_TYPES, NATIVE_TRANSFER_SYNTAXES
    from gateway.services.query import PATIENT_COUNTS, PATIENT_KEYWORDS

    contexts = _listener_contexts()
    storage = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    tables: dict[str, list[tuple[str, ...]]] = {}

    other = [cx for cx in contexts if str(cx.abstract_syntax) not in storage]
    tables["dimse-sop-classes"] = [(_name(str(cx.abstract_syntax)), str(cx.abstract_syntax), "SCP") for cx in other]
    tables["storage-sop-classes"] = [(_name(str(cx.abstract_syntax)), str(cx.abstract_syntax))
                                     for cx in contexts if str(cx.abstract_syntax) in storage]
    tables["dimse-transfer-syntaxes"] = [(str(ts), UID(str(ts)).name, "yes" if ts in UNCOMPRESSED else "no")
                                         for ts in TRANSFER_SYNTAXES]

    def level_of(attr) -> str:
        return "patient/study" if attr.keyword in PATIENT_KEYWORDS else attr.level

    tables["qido-attributes"] = [
        (a.keyword, f"({a.tag[:4]},{a.tag[4:]})", level_of(a), a.vr, _matching(a),
         "yes" if a.keyword in DEFAULT_RETURN.get(a.level, ()) else "no", "yes" if a.keyword in COMPUTED else "no")
        for a in INDEXED]
    tables["patient-level"] = ([(k, "matching and return") for k in PATIENT_KEYWORDS]
                               + [(k, "computed, return only") for k in PATIENT_COUNTS])

    classes = [obj for obj in vars(errors).values()
               if isinstance(obj, type) and issubclass(obj, errors.GatewayError)]
    tables["error-codes"] = [(cls.__name__, str(cls.http_status), f"0x{cls.dimse_status:04X}",
                              f"0x{cls.failure_reason:04X}") for cls in classes]
    tables["frame-media-types"] = ([(ts, "application/octet-stream") for ts in sorted(NATIVE_TRANSFER_SYNTAXES)]
                                   + [(ts, media) for ts, media in MEDIA_TYPES.items()])
    return tables


# --- what the statement says -----------------------------------------------------------------------

def _cells(line: str) -> tuple[str, ...]:
    return tuple(c.strip().strip("`") for c in line.strip().strip("|").split("|"))


def statement_tables(text: str) -> dict[str, list[tuple[str, ...]]]:
    tables = {}
    for match in _TABLE.finditer(text):
        lines = [line for line in match.group("body").splitlines() if line.strip().startswith("|")]
        tables[match.group("name")] = [_cells(line) for line in lines[2:]]  # header and separator
    return tables


def markdown(name: str, rows: list[tuple[str, ...]]) -> str:
    headers = {
        "dimse-sop-classes": ("SOP Class", "UID", "Role"),
        "storage-sop-classes": ("SOP Class", "UID"),
        "dimse-transfer-syntaxes": ("Transfer Syntax UID", "Name", "Query/Retrieve contexts"),
        "qido-attributes": ("Keyword", "Tag", "Level", "VR", "Matching", "Returned by default", "Computed"),
        "patient-level": ("Keyword", "Use"),
        "error-codes": ("Error (gateway/errors.py)", "HTTP", "DIMSE status", "STOW FailureReason"),
        "frame-media-types": ("Stored Transfer Syntax UID", "Frame media type (as stored)"),
    }[name]
    out = [f"<!-- table:{name} -->", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"`{c}`" if re.fullmatch(r"[0-9.]+|0x[0-9A-F]{4}|\([0-9A-F]{4},[0-9A-F]{4}\)", c) else c
                 for c in row]
        out.append("| " + " | ".join(cells) + " |")
    out.append("<!-- /table -->")
    return "\n".join(out)


# --- tests --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def declared():
    return statement_tables(STATEMENT.read_text())


@pytest.fixture(scope="module")
def expected():
    return expected_tables()


@pytest.mark.parametrize("name", ["dimse-sop-classes", "storage-sop-classes", "dimse-transfer-syntaxes",
                                  "qido-attributes", "patient-level", "error-codes", "frame-media-types"])
def test_statement_table_matches_the_code(declared, expected, name):
    assert name in declared, f"STATEMENT.md has no table:{name}"
    got, want = declared[name], expected[name]
    missing = [row for row in want if row not in got]
    extra = [row for row in got if row not in want]
    assert not missing and not extra, (
        f"STATEMENT.md table:{name} differs from the code.\n  missing: {missing[:10]}\n  not in the code: "
        f"{extra[:10]}\nPrint the current tables with: python -m tests.unit.test_conformance_statement")


def test_storage_contexts_take_both_roles():
    """The statement says: Storage SCP, and SCU over C-GET associations (SCP/SCU role selection)."""
    from pynetdicom import AllStoragePresentationContexts

    storage = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    for cx in _listener_contexts():
        if str(cx.abstract_syntax) in storage:
            assert cx.scu_role and cx.scp_role, cx.abstract_syntax


def test_statement_names_the_settings_and_codes_it_relies_on():
    text = STATEMENT.read_text()
    from gateway.config import load_settings

    settings = load_settings(overrides={"storage.data_dir": "/nonexistent"}, environ={})
    for name in re.findall(r"`((?:dimse|dicomweb|ingest|server)\.[a-z_]+)`", text):
        settings[name]  # raises if the statement names a setting that does not exist
    for code in ("0xA801", "0xA900", "0xC000", "0x0111", "0x0124", "0xA700", "0xFE00", "0xFF01"):
        assert code in text, code


if __name__ == "__main__":  # print the tables to paste into STATEMENT.md
    sys.path.insert(0, str(STATEMENT.parents[1]))
    for table_name, table_rows in expected_tables().items():
        print(markdown(table_name, table_rows), end="\n\n")
