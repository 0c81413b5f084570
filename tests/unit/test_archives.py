"""Zip downloads in process (gateway/services/archives.py and proprietary/archives.py): safe and
unique entry names from the index, the slice order, the slices and Range grammars, and the
CRC-32 of instances stored by older versions (read once, then kept in the index)."""
from __future__ import annotations

import io
import sqlite3
import zipfile
import zlib

import pytest

from gateway.errors import BadRequest
from gateway.services.archives import parse_slices, safe_filename, safe_part, slice_order
from gateway.synthetic import cbct_series, to_bytes
from proprietary.archives import UNSATISFIABLE, byte_range
from storage.records import InstanceRecord
from tests.helpers import multipart_body, multipart_content_type


# --- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("SYNTH-0001", "SYNTH-0001"),
    ("../../etc/passwd", "_.._etc_passwd"),
    ("..", "NOID"),
    (".", "NOID"),
    ("", "NOID"),
    (None, "NOID"),
    ("   ", "NOID"),
    ("a/b\\c", "a_b_c"),
    ('x<y>z:"w"|?*', "x_y_z__w____"),
    ("tab\there\x00nul\x7f", "tab_here_nul_"),
    ("bidi\u202egpj.exe", "bidi_gpj.exe"),  # a right-to-left override (format character)
    (" .hidden. ", "hidden"),
    ("CON", "_CON"),
    ("con.txt", "_con.txt"),
    ("LPT1", "_LPT1"),
    ("COM0", "_COM0"),
    ("CONSOLE", "CONSOLE"),
    ("e\u0301", "\u00e9"),  # NFC: macOS would store the decomposed form otherwise
    ("김지우", "김지우"),
    ("x" * 100, "x" * 64),
    (12, "12"),
])
def test_safe_part(value, expected):
    assert safe_part(value, "NOID") == expected


def test_safe_filename():
    assert safe_filename("1.2.3") == "1.2.3.zip"
    assert safe_filename('../a"b\r\n') == "a_b.zip"
    assert safe_filename("") == "archive.zip"


# --- slices ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("1-1", (1, 1)), ("10-10", (10, 10)), ("3-7", (3, 7)), ("4", (4, 4)),
                                            (" 2 - 3 ", (2, 3)), ("1-10", (1, 10))])
def test_parse_slices(text, expected):
    found = parse_slices(text, 10)
    assert (found.first, found.last, found.count) == (*expected, 10)


@pytest.mark.parametrize("text", ["0-3", "3-2", "1-11", "11", "0", "abc", "1-2-3", "", "-3", "1-", "1,2", "1.5-2",
                                  "9999999999-1"])
def test_bad_slices_name_the_valid_range(text):
    with pytest.raises(BadRequest, match=r"slices=1-10\b"):
        parse_slices(text, 10)


def test_one_slice_series():
    with pytest.raises(BadRequest, match=r"give a range within slices=1$"):
        parse_slices("1-2", 1)


def record(sop: str, number: int | None) -> InstanceRecord:
    return InstanceRecord("c", "1.2", "1.2.3", sop, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "k", 1, "s",
                          instance_number=number)


def header(sop: str, position=None, orientation=None) -> str:
    import json

    body = {"00080018": {"vr": "UI", "Value": [sop]}}
    if position is not None:
        body["00200032"] = {"vr": "DS", "Value": list(position)}
    if orientation is not None:
        body["00200037"] = {"vr": "DS", "Value": list(orientation)}
    return json.dumps(body)


def test_slices_follow_the_position_on_the_normal_not_the_instance_number():
    # Sagittal slices: rows along +y, columns along -z, so the normal is -x: larger x comes first.
    orientation = (0, 1, 0, 0, 0, -1)
    xs = {"a": 5.0, "b": -2.5, "c": 0.0, "d": 12.0}
    records = [record("a", 1), record("b", 2), record("c", 3), record("d", 4)]
    headers = [header(s, (x, 10.0, 3.0), orientation) for s, x in xs.items()]
    assert [r.sop_uid for r in slice_order(records, headers)] == ["d", "a", "c", "b"]


def test_oblique_positions_given_as_strings():
    orientation = ("1", "0", "0", "0", "0.8660254", "-0.5")  # tilted 30 degrees about x
    normal = (0, 0.5, 0.8660254)
    records = [record(s, n) for s, n in (("p", 3), ("q", 1), ("r", 2))]
    steps = {"p": 0.0, "q": 2.0, "r": 1.0}
    headers = [header(s, tuple(str(round(k * v, 6)) for v in normal), orientation) for s, k in steps.items()]
    assert [r.sop_uid for r in slice_order(records, headers)] == ["p", "r", "q"]


def test_without_every_position_the_instance_number_decides():
    records = [record("a", 3), record("b", None), record("c", 1), record("d", 2)]
    headers = [header("a", (0, 0, 9), (1, 0, 0, 0, 1, 0)), header("b"), header("c", (0, 0, 1)), header("d", (0, 0, 0))]
    assert [r.sop_uid for r in slice_order(records, headers)] == ["c", "d", "a", "b"]
    without_orientation = [header(s, (0, 0, z)) for s, z in (("a", 1), ("b", 2), ("c", 3), ("d", 4))]
    assert [r.sop_uid for r in slice_order(records, without_orientation)] == ["c", "d", "a", "b"]


# --- byte ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize("header_value, expected", [
    (None, None), ("", None),
    ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 1000)), ("bytes=-100", (900, 1000)), ("bytes=-5000", (0, 1000)),
    ("bytes=990-5000", (990, 1000)), ("bytes=999-999", (999, 1000)), ("BYTES = 5-6", (5, 7)),
    ("bytes=1000-", UNSATISFIABLE), ("bytes=5000-6000", UNSATISFIABLE), ("bytes=-0", UNSATISFIABLE),
    ("bytes=0-1,5-6", None),  # several ranges: the whole
    ("bytes=5-2", None), ("bytes=abc", None), ("items=0-1", None), ("bytes=-", None), ("bytes=", None),
    ("bytes=1-2,5-1", None),
])
def test_byte_range(header_value, expected):
    assert byte_range(header_value, 1000) == expected


# --- through the app, in process -----------------------------------------------------------------

def stow(client, headers, instances: list[bytes]):
    response = client.post("/dicom-web/studies", data=multipart_body(instances),
                           headers={**headers, "Content-Type": multipart_content_type(),
                                    "Accept": "application/dicom+json"})
    assert response.status_code == 200, response.get_data(as_text=True)


def slices(n: int, **kw) -> list:
    return list(cbct_series(n, 16, **kw))


def test_names_are_safe_unique_and_fall_back_to_the_sop_uid(client, auth):
    headers = auth.headers()
    study_uid = "1.2.826.0.1.3680043.8.498.1001"
    first = slices(4, study_uid=study_uid, series_uid=study_uid + ".1", patient_id="../../x/COM1", series_number=3)
    first[1].InstanceNumber = first[2].InstanceNumber = 7  # repeated: both named by their SOP UID
    del first[3].InstanceNumber  # missing: named by its SOP UID
    for ds in first:
        ds.StudyDate = ""
    second = slices(2, study_uid=study_uid, series_uid=study_uid + ".2")
    for ds in second:
        del ds.SeriesNumber
        ds.StudyDate = ""
    stow(client, headers, [to_bytes(ds) for ds in first + second])
    response = client.get(f"/api/v1/studies/{study_uid}/archive", headers=headers)
    assert response.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(response.data)).namelist()
    top = f"_.._x_COM1/NODATE_{study_uid}"
    sevens = sorted(ds.SOPInstanceUID for ds in first[1:3])
    assert names == [  # numbered series first, InstanceNumber order, those without one last
        f"{top}/3_{study_uid}.1/0001.dcm",
        f"{top}/3_{study_uid}.1/{sevens[0]}.dcm",
        f"{top}/3_{study_uid}.1/{sevens[1]}.dcm",
        f"{top}/3_{study_uid}.1/{first[3].SOPInstanceUID}.dcm",
        f"{top}/0_{study_uid}.2/0001.dcm",
        f"{top}/0_{study_uid}.2/0002.dcm",
    ]


def test_crc32_of_older_rows_is_computed_once_and_kept(client, auth, settings):
    headers = auth.headers()
    series = slices(5, study_uid="1.2.826.0.1.3680043.8.498.1002")
    data = [to_bytes(ds) for ds in series]
    stow(client, headers, data)
    study = series[0].StudyInstanceUID
    fresh = client.get(f"/api/v1/studies/{study}/archive", headers=headers)
    db = settings.path("storage.sqlite_path", "index.sqlite3")
    with sqlite3.connect(db) as conn:  # as rows indexed before CRC-32s were kept
        conn.execute("UPDATE instances SET crc32 = NULL")
    services = client.application.extensions["gateway"]
    opened = []
    real_open = services.blobs.open
    services.blobs.open = lambda key: opened.append(key) or real_open(key)
    try:
        legacy = client.get(f"/api/v1/studies/{study}/archive", headers=headers)
        assert legacy.data == fresh.data and legacy.headers["ETag"] == fresh.headers["ETag"]
        assert len(opened) == 2 * 5  # once for the CRC-32, once for the bytes
        with sqlite3.connect(db) as conn:
            kept = dict(conn.execute("SELECT sop_uid, crc32 FROM instances"))
        assert kept == {ds.SOPInstanceUID: zlib.crc32(d) for ds, d in zip(series, data)}
        opened.clear()
        again = client.get(f"/api/v1/studies/{study}/archive", headers={**headers, "Range": "bytes=-100"})
        assert again.status_code == 206 and again.data == fresh.data[-100:]
        assert opened == []  # the central directory: no blob read at all
    finally:
        services.blobs.open = real_open
