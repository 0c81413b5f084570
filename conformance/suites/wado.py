"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered, thumbnails, Accept."""
from __future__ import annotations

import io
import logging

from conformance.data import EXPLICIT_LE, JPEG2000_LOSSLESS, Instance
from conformance.suites.base import Context, Suite
from conformance.suites.common import (ACCEPT_DICOM, ACCEPT_DICOM_ANY, ACCEPT_OCTETS, ACCEPT_OCTETS_ANY,
                                       DICOM_JSON, OHIF_FRAME_ACCEPT, SOP_UID, expect_dicom_json, expect_status,
                                       media_param, parse_multipart, read_dicom, text)

logger = logging.getLogger(__name__)

suite = Suite("wado", "WADO-RS (PS3.18 10.4)", needs="dicomweb")

# What a viewer needs of every image instance's metadata (OHIF v3 / Cornerstone3D).
VIEWER_ATTRIBUTES = {"SOPClassUID": "00080016", "InstanceNumber": "00200013", "Rows": "00280010",
                     "Columns": "00280011", "BitsAllocated": "00280100", "BitsStored": "00280101",
                     "HighBit": "00280102", "PixelRepresentation": "00280103", "SamplesPerPixel": "00280002",
                     "PhotometricInterpretation": "00280004", "PixelSpacing": "00280030",
                     "RescaleSlope": "00281053", "RescaleIntercept": "00281052", "WindowCenter": "00281050",
                     "WindowWidth": "00281051", "ImagePositionPatient": "00200032",
                     "ImageOrientationPatient": "00200037"}


def _studies(ctx: Context) -> dict:
    return ctx.fixture("studies")


def _ct_series(ctx: Context) -> tuple[str, list[Instance]]:
    a = _studies(ctx)["main"]
    return next((uid, items) for uid, items in a.series().items() if str(items[0].ds.Modality) == "CT")


def _other(ctx: Context, predicate) -> Instance:
    return next(i for i in _studies(ctx)["other"].instances if predicate(i))


def _multiframe(ctx: Context) -> Instance:
    return _other(ctx, lambda i: i.frames > 1 and i.transfer_syntax == EXPLICIT_LE)


def _jp2k_single(ctx: Context) -> Instance:
    return _other(ctx, lambda i: i.frames == 1 and i.transfer_syntax == JPEG2000_LOSSLESS)


def _jp2k_multi(ctx: Context) -> Instance:
    return _other(ctx, lambda i: i.frames > 1 and i.transfer_syntax == JPEG2000_LOSSLESS)


def parts_of(ctx: Context, response, what: str, expected_type: str | None = None):
    expect_status(ctx, response, 200, what)
    try:
        parts = parse_multipart(response.headers.get("Content-Type", ""), response.content)
    except ValueError as exc:
        ctx.fail(f"{what}: {exc}")
    if expected_type:
        related = media_param(response.headers.get("Content-Type", ""), "type")
        ctx.expect(related is None or related.lower() == expected_type,
                   f"{what}: multipart type={related!r}, expected {expected_type}")
    return parts


def _dicom_parts(ctx: Context, response, what: str) -> list:
    datasets = []
    for n, part in enumerate(parts_of(ctx, response, what, "application/dicom"), 1):
        ctx.expect(part.content_type.split(";")[0].strip().lower() in ("application/dicom", ""),
                   f"{what}: part {n} has Content-Type {part.content_type!r}")
        try:
            datasets.append(read_dicom(part.body))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types
            ctx.fail(f"{what}: part {n} is not a DICOM Part 10 file: {exc}")
    return datasets


def _expect_sops(ctx: Context, datasets, instances: list[Instance], what: str) -> None:
    got = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    ctx.expect(got == sorted(i.sop for i in instances),
               f"{what}: {len(got)} instance(s) returned, expected the {len(instances)} stored")


# --- retrieve instances -----------------------------------------------------------------------

@suite.check("retrieve-study", "a study is retrieved as multipart/related application/dicom",
             "PS3.18 10.4.1.1.1 (Study Instances); 8.7.3 (multipart/related)")
def retrieve_study(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    datasets = _dicom_parts(ctx, ctx.web.get(f"studies/{a.uid}", headers={"Accept": ACCEPT_DICOM}), "study")
    _expect_sops(ctx, datasets, a.instances, "study retrieve")


@suite.check("retrieve-series", "a series is retrieved with all its instances", "PS3.18 10.4.1.1.1 (Series Instances)")
def retrieve_series(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    series_uid, instances = _ct_series(ctx)
    response = ctx.web.get(f"studies/{a.uid}/series/{series_uid}", headers={"Accept": ACCEPT_DICOM})
    datasets = _dicom_parts(ctx, response, "series")
    _expect_sops(ctx, datasets, instances, "series retrieve")
    for ds in datasets:
        original = next(i for i in instances if i.sop == str(ds.SOPInstanceUID))
        ctx.expect(ds.PixelData == original.ds.PixelData, f"pixel data of {original.sop} differs from what was stored")


@suite.check("retrieve-instance", "an instance is retrieved", "PS3.18 10.4.1.1.1 (Instance)")
def retrieve_instance(ctx: Context) -> None:
    _, instances = _ct_series(ctx)
    datasets = _dicom_parts(ctx, ctx.web.get(instances[0].path, headers={"Accept": ACCEPT_DICOM}), "instance")
    _expect_sops(ctx, datasets, instances[:1], "instance retrieve")


@suite.check("default-transfer-syntax", "without transfer-syntax, a compressed instance comes as Explicit VR LE",
             "PS3.18 8.7.3 (default Transfer Syntax of application/dicom: Explicit VR Little Endian)")
def default_transfer_syntax(ctx: Context) -> None:
    item = _jp2k_single(ctx)
    datasets = _dicom_parts(ctx, ctx.web.get(item.path, headers={"Accept": ACCEPT_DICOM}), "compressed instance")
    ts = str(datasets[0].file_meta.TransferSyntaxUID)
    ctx.expect(ts == EXPLICIT_LE, f"stored as JPEG 2000, returned as {ts}, expected {EXPLICIT_LE} (no transfer-syntax "
                                  "asked)")
    ctx.expect(datasets[0].PixelData == item.decoded_frame(1), "the decompressed pixel data differ from the original")


@suite.check("transfer-syntax-star", "transfer-syntax=* returns the instance as stored (no transcoding)",
             "PS3.18 8.7.3 (transfer-syntax=*); OHIF and Cornerstone ask for it", level="interop")
def transfer_syntax_star(ctx: Context) -> None:
    item = _jp2k_single(ctx)
    datasets = _dicom_parts(ctx, ctx.web.get(item.path, headers={"Accept": ACCEPT_DICOM_ANY}), "transfer-syntax=*")
    ts = str(datasets[0].file_meta.TransferSyntaxUID)
    ctx.expect(ts == item.transfer_syntax, f"stored as {item.transfer_syntax}, returned as {ts}")
    ctx.expect(datasets[0].PixelData == item.ds.PixelData, "the pixel data are not the stored bytes")


@suite.check("unavailable-transfer-syntax-406", "a transfer syntax the server cannot produce answers 406",
             "PS3.18 8.7 (406 Not Acceptable)", level="interop")
def unavailable_transfer_syntax(ctx: Context) -> None:
    _, instances = _ct_series(ctx)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.999.999.1'
    response = ctx.web.get(instances[0].path, headers={"Accept": accept}, note="no such transfer syntax")
    expect_status(ctx, response, 406, "retrieve in a transfer syntax that does not exist")


@suite.check("accept-variants", "lenient Accept: unquoted, multipart/*, several ranges, */*",
             "PS3.18 8.7 (Accept; unsupported values ignored); RFC 9110 12.5.1", level="interop")
def accept_variants(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    series_uid, instances = _ct_series(ctx)
    for accept in ("multipart/related; type=application/dicom; transfer-syntax=*",
                   "multipart/related; type=application/dicom",
                   'multipart/related; type="application/octet-stream", multipart/related; type="application/dicom"',
                   "multipart/*", "*/*"):
        response = ctx.web.get(f"studies/{a.uid}/series/{series_uid}", headers={"Accept": accept})
        _expect_sops(ctx, _dicom_parts(ctx, response, f"Accept: {accept}"), instances, f"Accept: {accept}")


@suite.check("not-found-404", "an unknown study, series or instance answers 404", "PS3.18 10.4.3; 8.5 (404)")
def not_found(ctx: Context) -> None:
    missing = ctx.data.uid()
    for path, accept in ((f"studies/{missing}", ACCEPT_DICOM), (f"studies/{missing}/metadata", DICOM_JSON)):
        expect_status(ctx, ctx.web.get(path, headers={"Accept": accept}), 404, f"GET {path}")


# --- metadata ---------------------------------------------------------------------------------

def _metadata(ctx: Context, path: str, what: str) -> list[dict]:
    response = ctx.web.get(f"{path}/metadata", headers={"Accept": DICOM_JSON})
    expect_status(ctx, response, 200, what)
    body = expect_dicom_json(ctx, response, what)
    ctx.expect(isinstance(body, list), f"{what}: not a JSON array")
    return body


@suite.check("metadata-levels", "study, series and instance metadata list the right instances",
             "PS3.18 Table 10.3-2 (Metadata: M); 10.4.1.1.2")
def metadata_levels(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    series_uid, instances = _ct_series(ctx)
    for path, expected in ((f"studies/{a.uid}", a.instances), (f"studies/{a.uid}/series/{series_uid}", instances),
                           (instances[0].path, instances[:1])):
        body = _metadata(ctx, path, f"{path}/metadata")
        got = sorted(text(item, SOP_UID) or "" for item in body)
        ctx.expect(got == sorted(i.sop for i in expected),
                   f"{path}/metadata has {len(got)} instance(s), expected {len(expected)}")


def _as_json_values(ds, keyword: str) -> list:
    value = ds.get(keyword)
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [float(v) for v in value]
    return [float(value)] if not isinstance(value, str) else [value]


@suite.check("metadata-viewer-attributes", "every image's metadata has what a viewer needs, as stored",
             "PS3.18 10.4.1.1.2 (all attributes but bulk data); OHIF needs the image attributes to render")
def metadata_viewer(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    series_uid, instances = _ct_series(ctx)
    body = _metadata(ctx, f"studies/{a.uid}/series/{series_uid}", "series metadata")
    for item in body:
        sop = text(item, SOP_UID)
        original = next((i for i in instances if i.sop == sop), None)
        ctx.expect(original is not None, f"unknown instance {sop} in the metadata")
        missing = [k for k, tag in VIEWER_ATTRIBUTES.items() if not (item.get(tag) or {}).get("Value")]
        ctx.expect(not missing, f"metadata of {sop} lacks {', '.join(missing)}")
        for keyword in ("PixelSpacing", "ImagePositionPatient", "RescaleIntercept", "WindowCenter", "Rows"):
            got = [float(v) for v in item[VIEWER_ATTRIBUTES[keyword]]["Value"]]
            ctx.expect(got == _as_json_values(original.ds, keyword),
                       f"{keyword} of {sop} is {got}, stored {_as_json_values(original.ds, keyword)}")
    multi = _multiframe(ctx)
    body = _metadata(ctx, multi.path, "multi-frame instance metadata")
    frames = (body[0].get("00280008") or {}).get("Value") or [None]
    ctx.expect(frames[0] is not None and int(frames[0]) == multi.frames,
               f"NumberOfFrames of the multi-frame instance is {frames[0]!r}, expected {multi.frames}")


@suite.check("metadata-bulkdata-uri", "bulk data (Pixel Data) appears in metadata as a BulkDataURI",
             "PS3.18 10.4.1.1.2; F.2.7 (BulkDataURI)")
def metadata_bulkdata(ctx: Context) -> None:
    _, instances = _ct_series(ctx)
    item = _metadata(ctx, instances[0].path, "instance metadata")[0]
    pixel = item.get("7FE00010")
    ctx.expect(pixel is not None, "Pixel Data (7FE0,0010) is absent from the metadata (expected a BulkDataURI)")
    ctx.expect("BulkDataURI" in pixel and "InlineBinary" not in pixel,
               f"Pixel Data is given as {sorted(pixel)}, expected BulkDataURI")


@suite.check("bulkdata-retrieve", "the Pixel Data BulkDataURI returns the stored pixels",
             "PS3.18 Table 10.3-2 (Bulkdata: O); F.2.7 (a BulkDataURI given must resolve)", level="interop")
def bulkdata_retrieve(ctx: Context) -> None:
    series_uid, instances = _ct_series(ctx)
    item = _metadata(ctx, instances[0].path, "instance metadata")[0]
    uri = (item.get("7FE00010") or {}).get("BulkDataURI")
    ctx.expect(uri, "no Pixel Data BulkDataURI in the metadata")
    url = ctx.web.resolve(uri, f"studies/{instances[0].study}/series/{series_uid}")
    parts = parts_of(ctx, ctx.web.get(url, headers={"Accept": ACCEPT_OCTETS}), f"GET {uri}")
    data = b"".join(p.body for p in parts)
    ctx.expect(data == bytes(instances[0].ds.PixelData),
               f"bulk data of {len(data)} bytes differ from the stored {len(instances[0].ds.PixelData)} bytes")


@suite.check("metadata-not-acceptable-406", "metadata asked only as image/png answers 406",
             "PS3.18 8.7 (406 when no acceptable media type); RFC 9110 15.5.7")
def metadata_406(ctx: Context) -> None:
    _, instances = _ct_series(ctx)
    response = ctx.web.get(f"{instances[0].path}/metadata", headers={"Accept": "image/png"})
    expect_status(ctx, response, 406, "metadata with Accept: image/png")


# --- frames -------------------------------------------------------------------------------------

def _frame_parts(ctx: Context, item: Instance, frames: str, accept: str, what: str) -> list:
    return parts_of(ctx, ctx.web.get(f"{item.path}/frames/{frames}", headers={"Accept": accept}), what)


@suite.check("frames-single", "one frame, uncompressed, as the stored pixel bytes",
             "PS3.18 Table 10.3-2 (Frames: M); 10.4.1.1; 8.7.3 (application/octet-stream)")
def frames_single(ctx: Context) -> None:
    _, instances = _ct_series(ctx)
    parts = _frame_parts(ctx, instances[1], "1", ACCEPT_OCTETS, "frame 1")
    ctx.expect(len(parts) == 1, f"{len(parts)} parts for one frame")
    ctx.expect(parts[0].body == instances[1].frame_bytes(1),
               f"frame of {len(parts[0].body)} bytes differs from the stored {instances[1].uncompressed_frame_size}")


@suite.check("frames-list", "frames 1,3,5 of a multi-frame instance, in that order", "PS3.18 Table 10.3-2 (Frames: M); 10.4.1.1 (frame list)")
def frames_list(ctx: Context) -> None:
    item = _multiframe(ctx)
    parts = _frame_parts(ctx, item, "1,3,5", ACCEPT_OCTETS, "frames 1,3,5")
    ctx.expect(len(parts) == 3, f"{len(parts)} parts for frames 1,3,5")
    for part, number in zip(parts, (1, 3, 5)):
        ctx.expect(part.body == item.frame_bytes(number), f"part for frame {number} is not frame {number}")


@suite.check("frames-default-uncompressed", "a compressed frame asked as octet-stream comes decompressed",
             "PS3.18 8.7.3 (application/octet-stream: Explicit VR Little Endian, uncompressed)")
def frames_default(ctx: Context) -> None:
    item = _jp2k_multi(ctx)
    parts = _frame_parts(ctx, item, "2", ACCEPT_OCTETS, "compressed frame 2 as octet-stream")
    ctx.expect(len(parts) == 1, f"{len(parts)} parts for one frame")
    ctx.expect(parts[0].body == item.decoded_frame(2),
               f"{len(parts[0].body)} bytes, expected the {item.uncompressed_frame_size} decoded bytes of frame 2")


@suite.check("frames-transfer-syntax-star", "frames with transfer-syntax=* come as stored (one frame, not the "
             "whole instance transcoded)", "PS3.18 8.7.3 (transfer-syntax=*); OHIF and Cornerstone ask for it", level="interop")
def frames_star(ctx: Context) -> None:
    item = _jp2k_multi(ctx)
    parts = _frame_parts(ctx, item, "2", ACCEPT_OCTETS_ANY, "compressed frame 2, transfer-syntax=*")
    ctx.expect(len(parts) == 1, f"{len(parts)} parts for one frame")
    ctx.expect(parts[0].body == item.frame_bytes(2), f"frame 2 ({len(parts[0].body)} bytes, Content-Type "
               f"{parts[0].content_type!r}) is not the stored JPEG 2000 frame ({len(item.frame_bytes(2))} bytes)")


@suite.check("frames-ohif-accept", "OHIF's frame Accept headers (unquoted; duplicated transfer-syntax)",
             "PS3.18 8.7 (unsupported Accept values ignored); OHIF v3", level="interop")
def frames_ohif(ctx: Context) -> None:
    _, instances = _ct_series(ctx)
    item = instances[0]
    for accept in (OHIF_FRAME_ACCEPT, 'multipart/related; type="application/octet-stream"; '
                                      f'transfer-syntax={EXPLICIT_LE}; transfer-syntax=*'):
        parts = _frame_parts(ctx, item, "1", accept, f"Accept: {accept}")
        ctx.expect(len(parts) == 1 and parts[0].body == item.frame_bytes(1),
                   f"Accept: {accept}: not the frame's bytes")


@suite.check("frames-any-type", "frames with dicomweb-client's default Accept type=\"*/*\"",
             "PS3.18 8.7 (media ranges); dicomweb-client default", level="interop")
def frames_any(ctx: Context) -> None:
    _, instances = _ct_series(ctx)
    parts = _frame_parts(ctx, instances[0], "1", 'multipart/related; type="*/*"', 'type="*/*"')
    ctx.expect(len(parts) == 1, f"{len(parts)} parts for one frame")


# --- rendered and thumbnails --------------------------------------------------------------------

def _image(ctx: Context, response, media_type: str, what: str):
    from PIL import Image

    expect_status(ctx, response, 200, what)
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    ctx.expect(ctype == media_type, f"{what}: Content-Type {ctype!r}, expected {media_type}")
    try:
        image = Image.open(io.BytesIO(response.content))
        image.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types
        ctx.fail(f"{what}: the body is not a decodable {media_type}: {exc}")
    return image


@suite.check("rendered-instance", "an instance rendered as JPEG and as PNG", "PS3.18 Table 10.3-2 (Rendered Instance: M); 10.4.1.1.3")
def rendered_instance(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    item = next(i for i in a.instances if str(i.ds.Modality) == "IO")
    for media_type in ("image/jpeg", "image/png"):
        _image(ctx, ctx.web.get(f"{item.path}/rendered", headers={"Accept": media_type}), media_type,
               f"rendered {media_type}")


@suite.check("rendered-frame", "one frame of a multi-frame instance rendered", "PS3.18 Table 10.3-2 (Rendered Frames: M); 10.4.1.1.3")
def rendered_frame(ctx: Context) -> None:
    item = _multiframe(ctx)
    _image(ctx, ctx.web.get(f"{item.path}/frames/3/rendered", headers={"Accept": "image/jpeg"}), "image/jpeg",
           "frame 3 rendered")


@suite.check("rendered-parameters", "viewport and window change the rendered image",
             "PS3.18 8.3.5.1 (viewport, window, quality)")
def rendered_parameters(ctx: Context) -> None:
    _, instances = _ct_series(ctx)
    path = f"{instances[1].path}/rendered"
    image = _image(ctx, ctx.web.get(path, query="viewport=32,32", headers={"Accept": "image/png"}), "image/png",
                   "viewport=32,32")
    ctx.expect(max(image.size) == 32 and min(image.size) <= 32, f"viewport=32,32 gave {image.size}")
    narrow = _image(ctx, ctx.web.get(path, query="window=100,50,linear", headers={"Accept": "image/png"}),
                    "image/png", "window=100,50")
    wide = _image(ctx, ctx.web.get(path, query="window=1000,4000,linear", headers={"Accept": "image/png"}),
                  "image/png", "window=1000,4000")
    ctx.expect(narrow.tobytes() != wide.tobytes(), "two different windows rendered the same image")


@suite.check("thumbnails", "thumbnails of a study, a series and an instance",
             "PS3.18 Table 10.3-2 (Thumbnail: O); 10.4.1.1.4; OHIF thumbnailRendering wadors", level="interop")
def thumbnails(ctx: Context) -> None:
    a = _studies(ctx)["main"]
    series_uid, instances = _ct_series(ctx)
    for path in (f"studies/{a.uid}", f"studies/{a.uid}/series/{series_uid}", instances[0].path):
        _image(ctx, ctx.web.get(f"{path}/thumbnail", headers={"Accept": "image/jpeg"}), "image/jpeg",
               f"{path}/thumbnail")
