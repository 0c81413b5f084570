"""DIMSE (PS3.4 Annexes A, B, C; PS3.7; PS3.8): verification, storage, query/retrieve, access.

The suite is the SCU (calling AE ``--calling-aet``). For C-MOVE it runs its own storage SCP
(``--move-scp AET@HOST:PORT``) and asks the target to move to it: the target must know
that AE (our gateway: ``dimse.destinations``; Orthanc: ``DicomModalities``).
"""
from __future__ import annotations

import logging
import threading
import time

from pydicom.dataset import Dataset

from conformance.data import Instance
from conformance.suites.base import Context, Suite
from conformance.targets import AssociationRefused, StorageSCP, status_text

logger = logging.getLogger(__name__)

suite = Suite("dimse", "DIMSE (PS3.4, PS3.7, PS3.8)", needs="dimse")

SUCCESS, PENDING = 0x0000, (0xFF00, 0xFF01)
STORE_WARNINGS = (0xB000, 0xB006, 0xB007)


def _models():
    from pynetdicom import sop_class as sc

    return sc


def _contexts(*abstract_syntaxes, transfer_syntaxes=None):
    from pynetdicom.presentation import build_context

    return [build_context(a, transfer_syntaxes) if transfer_syntaxes else build_context(a) for a in abstract_syntaxes]


def _store_contexts(instances: list[Instance]):
    """One context per (SOP class, stored transfer syntax), plus the uncompressed ones per class."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom.presentation import build_context

    pairs = dict.fromkeys((i.sop_class, i.transfer_syntax) for i in instances)
    contexts = [build_context(cls, [ts]) for cls, ts in pairs]
    for cls in dict.fromkeys(i.sop_class for i in instances):
        contexts.append(build_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return contexts


def _find(ctx: Context, model: str, identifier: Dataset, *, calling_aet: str | None = None) -> list:
    """(status code, identifier) of every response of one C-FIND."""
    sc = _models()
    uid = {"patient": sc.PatientRootQueryRetrieveInformationModelFind,
           "study": sc.StudyRootQueryRetrieveInformationModelFind}[model]
    out = []
    with ctx.dimse.association(_contexts(uid), calling_aet=calling_aet) as assoc:
        for status, found in assoc.send_c_find(identifier, uid):
            code = int(status.Status) if status is not None and "Status" in status else None
            out.append((code, found))
            if code is None:
                break
    pending = sum(1 for code, _ in out if code in PENDING)
    final = [status_text(_status_ds(code)) for code, _ in out if code not in PENDING]
    ctx.note(f"C-FIND {model} root, {_describe(identifier)}: {pending} pending match(es), final {final}")
    return out


def _status_ds(code):
    ds = Dataset()
    if code is not None:
        ds.Status = code
    return ds


def _describe(identifier: Dataset) -> str:
    return ", ".join(f"{e.keyword}={e.value!s}" if str(e.value) else f"{e.keyword}=''" for e in identifier)


def _matches(ctx: Context, responses: list, what: str) -> list[Dataset]:
    final = [code for code, _ in responses if code not in PENDING]
    ctx.expect(final and final[-1] == SUCCESS, f"{what}: final status {[hex(c) if c is not None else None for c in final]}"
                                               ", expected 0x0000")
    return [found for code, found in responses if code in PENDING]


def _identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _stored(ctx: Context):
    return ctx.fixture("dimse_stored")


# --- verification and storage --------------------------------------------------------------

@suite.check("echo", "C-ECHO answers Success", "PS3.7 9.1.5 (C-ECHO); PS3.4 A.4 (Verification SCP)")
def echo(ctx: Context) -> None:
    sc = _models()
    with ctx.dimse.association(_contexts(sc.Verification)) as assoc:
        status = assoc.send_c_echo()
        ctx.note(f"C-ECHO: {status_text(status)}")
        ctx.expect(status is not None and status.Status == SUCCESS, f"C-ECHO status {status_text(status)}")


@suite.fixture("dimse_stored")
def dimse_stored(ctx: Context):
    study = ctx.data.dimse
    statuses = []
    with ctx.dimse.association(_store_contexts(study.instances)) as assoc:
        for item in study.instances:
            status = assoc.send_c_store(item.ds)
            ctx.note(f"C-STORE {item.sop} ({item.transfer_syntax}): {status_text(status)}")
            statuses.append((item, status))
    bad = [(i.sop, status_text(s)) for i, s in statuses
           if s is None or "Status" not in s or int(s.Status) not in (SUCCESS, *STORE_WARNINGS)]
    if bad:
        ctx.fail(f"C-STORE refused: {bad}")
    time.sleep(0.2)
    return study


@suite.check("store", "C-STORE of CT slices and a JPEG 2000 MR image answers Success",
             "PS3.4 B.2.3 (C-STORE statuses); PS3.7 9.1.1")
def store(ctx: Context) -> None:
    _stored(ctx)


# --- C-FIND ---------------------------------------------------------------------------------------

@suite.check("find-patient", "C-FIND at PATIENT level (Patient Root)", "PS3.4 C.4.1; C.6.1 (Patient Root)")
def find_patient(ctx: Context) -> None:
    study = _stored(ctx)
    responses = _find(ctx, "patient", _identifier("PATIENT", PatientID=study.patient_id, PatientName=""))
    found = _matches(ctx, responses, "PATIENT level")
    ctx.expect(len(found) == 1, f"{len(found)} patients matched PatientID {study.patient_id}")
    ctx.expect(str(found[0].get("PatientName", "")) == study.patient_name,
               f"PatientName returned is {found[0].get('PatientName')!r}, stored {study.patient_name!r}")


@suite.check("find-study", "C-FIND at STUDY level returns the requested keys", "PS3.4 C.4.1; C.6.2 (Study Root)")
def find_study(ctx: Context) -> None:
    study = _stored(ctx)
    identifier = _identifier("STUDY", PatientID=study.patient_id, StudyInstanceUID="", StudyDate="",
                             StudyDescription="", NumberOfStudyRelatedInstances="")
    found = _matches(ctx, _find(ctx, "study", identifier), "STUDY level")
    ctx.expect(len(found) == 1, f"{len(found)} studies matched PatientID {study.patient_id}")
    match = found[0]
    ctx.expect(str(match.get("StudyInstanceUID", "")) == study.uid, "StudyInstanceUID differs")
    ctx.expect(str(match.get("StudyDate", "")) == "20220505", f"StudyDate is {match.get('StudyDate')!r}")
    count = match.get("NumberOfStudyRelatedInstances")
    ctx.expect(count in (None, "") or int(count) == len(study.instances),
               f"NumberOfStudyRelatedInstances is {count!r}, stored {len(study.instances)}")


@suite.check("find-series", "C-FIND at SERIES level", "PS3.4 C.4.1; C.6.2 (SERIES level)")
def find_series(ctx: Context) -> None:
    study = _stored(ctx)
    identifier = _identifier("SERIES", StudyInstanceUID=study.uid, SeriesInstanceUID="", Modality="")
    found = _matches(ctx, _find(ctx, "study", identifier), "SERIES level")
    got = sorted(str(ds.get("SeriesInstanceUID", "")) for ds in found)
    ctx.expect(got == sorted(study.series()), f"series found {got}, stored {sorted(study.series())}")


@suite.check("find-image", "C-FIND at IMAGE level", "PS3.4 C.4.1; C.6.2 (IMAGE level)")
def find_image(ctx: Context) -> None:
    study = _stored(ctx)
    series_uid, instances = next(iter(study.series().items()))
    identifier = _identifier("IMAGE", StudyInstanceUID=study.uid, SeriesInstanceUID=series_uid, SOPInstanceUID="",
                             InstanceNumber="")
    found = _matches(ctx, _find(ctx, "study", identifier), "IMAGE level")
    got = sorted(str(ds.get("SOPInstanceUID", "")) for ds in found)
    ctx.expect(got == sorted(i.sop for i in instances), f"{len(got)} instances found, stored {len(instances)}")


@suite.check("find-matching", "C-FIND wildcard and date range matching", "PS3.4 C.2.2.2.4, C.2.2.2.5")
def find_matching(ctx: Context) -> None:
    study = _stored(ctx)
    for keys in ({"PatientName": f"DIMSE{ctx.data.token}*"}, {"PatientID": study.patient_id,
                                                               "StudyDate": "20220101-20221231"}):
        identifier = _identifier("STUDY", StudyInstanceUID="", **keys)
        found = _matches(ctx, _find(ctx, "study", identifier), f"STUDY level {keys}")
        got = [str(ds.get("StudyInstanceUID", "")) for ds in found]
        ctx.expect(got == [study.uid], f"{keys}: matched {got}, expected [{study.uid}]")
    identifier = _identifier("STUDY", PatientID=study.patient_id, StudyDate="20230101-", StudyInstanceUID="")
    found = _matches(ctx, _find(ctx, "study", identifier), "StudyDate=20230101-")
    ctx.expect(not found, f"StudyDate=20230101- matched {len(found)} study (stored 20220505)")


# --- C-MOVE -----------------------------------------------------------------------------------------

def _move_scp(ctx: Context) -> StorageSCP:
    if ctx.move_scp is None:
        ctx.not_applicable("no --move-scp given: the suite has no storage SCP for the target to move to")
    scp = ctx.state.get("move_scp_server")
    if scp is None:
        aet, host, port = ctx.move_scp
        scp = StorageSCP(aet, host, port).start()
        ctx.state["move_scp_server"] = scp
    return scp


def _move(ctx: Context, identifier: Dataset, destination: str) -> list:
    sc = _models()
    uid = sc.StudyRootQueryRetrieveInformationModelMove
    out = []
    with ctx.dimse.association(_contexts(uid)) as assoc:
        for status, found in assoc.send_c_move(identifier, destination, uid):
            out.append(status)
    final = out[-1] if out else None
    ctx.note(f"C-MOVE to {destination}, {_describe(identifier)}: {len(out) - 1} pending, final {status_text(final)}"
             + (f", completed {final.get('NumberOfCompletedSuboperations')}, failed "
                f"{final.get('NumberOfFailedSuboperations')}" if final is not None else ""))
    return out


def _received_after(scp: StorageSCP, count: int, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    got: list = []
    while time.monotonic() < deadline:
        got += scp.take()
        if len(got) >= count:
            break
        time.sleep(0.05)
    return got + scp.take()


@suite.check("move-study", "C-MOVE of a study to the suite's storage SCP", "PS3.4 C.4.2 (C-MOVE); C.4.2.1.5")
def move_study(ctx: Context) -> None:
    study = _stored(ctx)
    scp = _move_scp(ctx)
    scp.take()
    responses = _move(ctx, _identifier("STUDY", StudyInstanceUID=study.uid), ctx.move_scp[0])
    final = responses[-1] if responses else None
    ctx.expect(final is not None and final.get("Status") == SUCCESS, f"final C-MOVE status {status_text(final)}")
    got = _received_after(scp, len(study.instances))
    ctx.note(f"storage SCP {ctx.move_scp[0]} received {len(got)} instance(s)")
    ctx.expect(sorted(r[0] for r in got) == sorted(i.sop for i in study.instances),
               f"the storage SCP received {len(got)} instance(s), the study has {len(study.instances)}")
    completed = final.get("NumberOfCompletedSuboperations")
    ctx.expect(completed in (None, "") or int(completed) == len(study.instances),
               f"NumberOfCompletedSuboperations is {completed}, expected {len(study.instances)}")


@suite.check("move-image", "C-MOVE of one instance (IMAGE level)", "PS3.4 C.4.2; C.6.2 (IMAGE level)")
def move_image(ctx: Context) -> None:
    study = _stored(ctx)
    scp = _move_scp(ctx)
    scp.take()
    item = study.instances[0]
    identifier = _identifier("IMAGE", StudyInstanceUID=study.uid, SeriesInstanceUID=item.series,
                             SOPInstanceUID=item.sop)
    responses = _move(ctx, identifier, ctx.move_scp[0])
    final = responses[-1] if responses else None
    ctx.expect(final is not None and final.get("Status") == SUCCESS, f"final C-MOVE status {status_text(final)}")
    got = _received_after(scp, 1)
    ctx.expect([r[0] for r in got] == [item.sop], f"the storage SCP received {[r[0] for r in got]}")


@suite.check("move-unknown-destination", "C-MOVE to an unknown AE answers 0xA801",
             "PS3.4 C.4.2.1.5 Table C.4-2 (A801: Move Destination unknown)")
def move_unknown(ctx: Context) -> None:
    study = _stored(ctx)
    responses = _move(ctx, _identifier("STUDY", StudyInstanceUID=study.uid), "NOSUCHDEST1")
    final = responses[-1] if responses else None
    ctx.expect(final is not None and final.get("Status") == 0xA801, f"final status {status_text(final)}, "
                                                                      "expected 0xA801")


# --- C-GET ----------------------------------------------------------------------------------------

def _get(ctx: Context, identifier: Dataset, instances: list[Instance]):
    from pynetdicom import evt
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

    sc = _models()
    uid = sc.StudyRootQueryRetrieveInformationModelGet
    contexts = _contexts(uid) + _store_contexts(instances)
    roles = []
    for cls in dict.fromkeys(i.sop_class for i in instances):
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = cls
        role.scu_role = False
        role.scp_role = True
        roles.append(role)
    received: dict[str, tuple[str, bytes]] = {}
    lock = threading.Lock()

    def on_store(event):
        with lock:
            ds = event.dataset
            received[str(ds.SOPInstanceUID)] = (str(event.context.transfer_syntax), bytes(ds.get("PixelData", b"")))
        return 0x0000

    statuses = []
    with ctx.dimse.association(contexts, ext_neg=roles, handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        for status, _ in assoc.send_c_get(identifier, uid):
            statuses.append(status)
    final = statuses[-1] if statuses else None
    ctx.note(f"C-GET {_describe(identifier)}: final {status_text(final)}, received {len(received)}")
    return final, received


@suite.check("get-study", "C-GET of a study over the same association", "PS3.4 C.4.3 (C-GET); C.4.3.1.4")
def get_study(ctx: Context) -> None:
    study = _stored(ctx)
    final, received = _get(ctx, _identifier("STUDY", StudyInstanceUID=study.uid), study.instances)
    ctx.expect(final is not None and final.get("Status") == SUCCESS, f"final C-GET status {status_text(final)}")
    ctx.expect(sorted(received) == sorted(i.sop for i in study.instances),
               f"received {len(received)} instance(s), the study has {len(study.instances)}")


@suite.check("get-as-stored", "C-GET returns a JPEG 2000 instance as it was stored (same syntax, same bytes)",
             "PS3.4 B.4.1 (storage SCP level 2: no loss); PACS practice (Orthanc, dcm4chee: stored as received)", level="interop")
def get_as_stored(ctx: Context) -> None:
    study = _stored(ctx)
    item = next(i for i in study.instances if i.transfer_syntax != "1.2.840.10008.1.2.1")
    identifier = _identifier("IMAGE", StudyInstanceUID=study.uid, SeriesInstanceUID=item.series,
                             SOPInstanceUID=item.sop)
    final, received = _get(ctx, identifier, [item])
    ctx.expect(item.sop in received, f"not received (final status {status_text(final)})")
    ts, pixels = received[item.sop]
    ctx.expect(ts == item.transfer_syntax, f"sent as {ts}, stored as {item.transfer_syntax}")
    ctx.expect(pixels == bytes(item.ds.PixelData), "the pixel data differ from the stored bytes")


# --- access control -------------------------------------------------------------------------------

@suite.check("unknown-calling-ae", "an association from an unknown calling AE title is rejected (or refused "
             "every query)", "PS3.8 9.3.4 (A-ASSOCIATE-RJ: calling AE title not recognized); PACS practice "
             "(access control per peer: Orthanc DicomModalities, dcm4chee per-AE lists)", level="interop")
def unknown_calling_ae(ctx: Context) -> None:
    study = _stored(ctx)
    try:
        responses = _find(ctx, "study", _identifier("STUDY", PatientID=study.patient_id, StudyInstanceUID=""),
                          calling_aet=ctx.unknown_aet)
    except AssociationRefused:
        return
    found = [f for code, f in responses if code in PENDING]
    ctx.expect(not found, f"calling AE {ctx.unknown_aet!r}, which the target was not told about, was accepted and "
                          f"found {len(found)} study")
    final = [code for code, _ in responses if code not in PENDING]
    ctx.expect(final and final[-1] != SUCCESS, f"calling AE {ctx.unknown_aet!r} was accepted and its C-FIND "
                                               "answered Success")
