"""Rendered frames: windowing, colour, viewport scaling and the PS3.18 parameters."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from gateway.imaging import (
    PixelDataError,
    decode_frame,
    index_pixel_data,
    parse_viewport,
    parse_window,
    parse_window_function,
    render_frame,
)
from tests.data import sample_file as find_test_file


def load(name: str) -> tuple[np.ndarray, Dataset]:
    """Frame 1 decoded through the gateway, and the file's header."""
    try:
        path = find_test_file(name)
    except FileNotFoundError:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = pydicom.dcmread(path, stop_before_pixels=True)
    with path.open("rb") as fp:
        index = index_pixel_data(fp, header)
        assert index is not None
        return decode_frame(fp, header, index, 1), header


def mono_header(photometric: str = "MONOCHROME2", **elements: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def png_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


RAMP = np.arange(0, 1000, dtype=np.uint16).reshape(20, 50)


@pytest.mark.parametrize(
    "media_type, image_format", [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF")]
)
@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb.dcm", "MR_small_RLE.dcm"])
def test_output_is_decodable_with_frame_size(name: str, media_type: str, image_format: str) -> None:
    pixels, header = load(name)
    data = render_frame(pixels, header, media_type=media_type)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == image_format
    assert image.size == (header.Columns, header.Rows)
    if image_format != "GIF":
        assert image.mode == ("RGB" if header.SamplesPerPixel == 3 else "L")


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_dcmtk_+eb+cy+np.dcm", "US1_J2KR.dcm", "SC_rgb_16bit.dcm", "examples_palette.dcm"],
)
def test_colour_and_palette_render_as_rgb(name: str) -> None:
    pixels, header = load(name)
    image = Image.open(io.BytesIO(render_frame(pixels, header, media_type="image/png")))
    assert image.mode == "RGB"
    assert image.size == (header.Columns, header.Rows)
    assert np.asarray(image).std() > 10  # not blank


def test_colour_render_keeps_rgb_values() -> None:
    pixels, header = load("SC_rgb.dcm")
    np.testing.assert_array_equal(png_pixels(render_frame(pixels, header, media_type="image/png")), pixels)


def test_ybr_input_is_converted_when_declared() -> None:
    pixels, header = load("SC_rgb.dcm")
    as_rgb = png_pixels(render_frame(pixels, header, media_type="image/png"))
    as_ybr = png_pixels(
        render_frame(pixels, header, media_type="image/png", photometric_interpretation="YBR_FULL")
    )
    assert not np.array_equal(as_rgb, as_ybr)


@pytest.mark.parametrize(
    "viewport, expected",
    [((100, 100), (100, 40)), ((25, 1000), (25, 10)), ((500, 60), (150, 60)), ((50, 20), (50, 20))],
)
def test_viewport_fits_and_keeps_aspect_ratio(viewport, expected) -> None:
    data = render_frame(RAMP, mono_header(), media_type="image/png", viewport=viewport)
    image = Image.open(io.BytesIO(data))
    assert image.size == expected
    assert image.width <= viewport[0] and image.height <= viewport[1]


def test_real_frame_thumbnail() -> None:
    pixels, header = load("emri_small.dcm")
    data = render_frame(pixels, header, viewport=(32, 32), quality=80)
    assert Image.open(io.BytesIO(data)).size == (32, 32)


def test_linear_window_follows_ps33_formula() -> None:
    out = png_pixels(render_frame(RAMP, mono_header(), media_type="image/png", window=(500, 101)))
    flat = out.ravel()
    assert flat[: 450].max() == 0  # x <= c - 0.5 - (w - 1) / 2 = 449.5
    assert flat[550:].min() == 255  # x > c - 0.5 + (w - 1) / 2 = 549.5
    assert flat[500] == 129  # ((500 - 499.5) / 100 + 0.5) * 255 = 128.8
    assert np.all(np.diff(flat.astype(int)) >= 0)


def test_window_changes_output() -> None:
    pixels, header = load("CT_small.dcm")
    default = render_frame(pixels, header, media_type="image/png")
    narrow = render_frame(pixels, header, media_type="image/png", window=(40, 80))
    wide = render_frame(pixels, header, media_type="image/png", window=(40, 2000))
    assert len({default, narrow, wide}) == 3


def test_window_functions_differ() -> None:
    outputs = {
        function: png_pixels(
            render_frame(RAMP, mono_header(), media_type="image/png", window=(500, 400),
                         window_function=function)
        ).tobytes()
        for function in ("linear", "linear-exact", "sigmoid")
    }
    assert len(set(outputs.values())) == 3


def test_header_window_first_value_is_used() -> None:
    header = mono_header(WindowCenter=[300, 700], WindowWidth=[200, 50])
    from_header = render_frame(RAMP, header, media_type="image/png")
    explicit = render_frame(RAMP, mono_header(), media_type="image/png", window=(300, 200))
    assert from_header == explicit


def test_rescale_is_applied_before_window() -> None:
    header = mono_header(RescaleSlope=2, RescaleIntercept=-1000)
    rescaled = render_frame(RAMP, header, media_type="image/png", window=(0, 200))
    # stored 500 -> 0 HU, so the window (0, 200) on stored values is (500, 100)
    plain = render_frame(RAMP, mono_header(), media_type="image/png", window=(500, 100))
    diff = np.abs(png_pixels(rescaled).astype(int) - png_pixels(plain).astype(int))
    assert diff.max() <= 2


def test_shared_functional_group_window() -> None:
    voi = Dataset()
    voi.WindowCenter = 300
    voi.WindowWidth = 200
    group = Dataset()
    group.FrameVOILUTSequence = [voi]
    header = mono_header(SharedFunctionalGroupsSequence=[group])
    explicit = render_frame(RAMP, mono_header(), media_type="image/png", window=(300, 200))
    assert render_frame(RAMP, header, media_type="image/png") == explicit


def test_min_max_without_window() -> None:
    out = png_pixels(render_frame(RAMP, mono_header(), media_type="image/png"))
    assert out.min() == 0 and out.max() == 255


def test_monochrome1_is_inverted() -> None:
    mono2 = png_pixels(render_frame(RAMP, mono_header(), media_type="image/png", window=(500, 600)))
    mono1 = png_pixels(
        render_frame(RAMP, mono_header("MONOCHROME1"), media_type="image/png", window=(500, 600))
    )
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_quality_changes_jpeg_size() -> None:
    pixels, header = load("CT_small.dcm")
    low = render_frame(pixels, header, quality=5)
    high = render_frame(pixels, header, quality=95)
    assert len(low) < len(high)
    assert render_frame(pixels, header) == render_frame(pixels, header, quality=90)


@pytest.mark.parametrize("media_type", ["image/webp", "application/dicom", "text/html"])
def test_unsupported_media_type(media_type: str) -> None:
    with pytest.raises(PixelDataError, match=f"rendered media type '{media_type}' is not supported"):
        render_frame(RAMP, mono_header(), media_type=media_type)


def test_media_type_parameters_and_case_are_accepted() -> None:
    data = render_frame(RAMP, mono_header(), media_type="Image/PNG; charset=binary")
    assert Image.open(io.BytesIO(data)).format == "PNG"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quality": 0}, "quality must be between 1 and 100"),
        ({"quality": 101}, "quality must be between 1 and 100"),
        ({"window": (40, 0)}, "window width must be greater than 0"),
        ({"window_function": "cubic"}, "window function 'cubic'"),
    ],
)
def test_invalid_arguments(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_frame(RAMP, mono_header(), **kwargs)


def test_multi_frame_array_is_rejected() -> None:
    with pytest.raises(PixelDataError, match=r"got shape \(2, 20, 50\)"):
        render_frame(np.stack([RAMP, RAMP]), mono_header())


# --- parameters -------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected, function",
    [
        ("40,400,linear", (40.0, 400.0), "linear"),
        ("-600.5, 1500 ,SIGMOID", (-600.5, 1500.0), "sigmoid"),
        ("40,400,linear-exact", (40.0, 400.0), "linear-exact"),
        ("40,400", (40.0, 400.0), "linear"),
    ],
)
def test_parse_window(value: str, expected, function: str) -> None:
    assert parse_window(value) == expected
    assert parse_window_function(value) == function


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "window must be 'center,width,function'"),
        ("40", "window must be 'center,width,function'"),
        ("40,400,linear,1", "window must be 'center,width,function'"),
        ("a,400,linear", "window center and width must be numbers"),
        ("nan,400,linear", "must be finite"),
        ("40,0,linear", "window width must be greater than 0"),
        ("40,-5,linear", "window width must be greater than 0"),
        ("40,400,cubic", "window function 'cubic' is not one of linear, linear-exact, sigmoid"),
    ],
)
def test_parse_window_rejects(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(value)


@pytest.mark.parametrize(
    "value, expected",
    [("512,512", (512, 512)), (" 256 , 128 ", (256, 128)), ("256,128,0,0,64,-64", (256, 128)),
     ("256,128,,,,", (256, 128))],
)
def test_parse_viewport(value: str, expected) -> None:
    assert parse_viewport(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("512", "viewport must be 'vw,vh' or 'vw,vh,sx,sy,sw,sh'"),
        ("1,2,3", "viewport must be 'vw,vh' or 'vw,vh,sx,sy,sw,sh'"),
        ("a,b", "viewport values must be integers"),
        ("10.5,10", "viewport values must be integers"),
        ("10,10,x,,,", "viewport values must be integers"),
        ("0,10", "viewport width and height must be positive"),
        ("10,-1", "viewport width and height must be positive"),
    ],
)
def test_parse_viewport_rejects(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_viewport(value)


def test_palette_without_lookup_tables_is_an_error() -> None:
    with pytest.raises(PixelDataError, match="PALETTE COLOR frame without a usable palette"):
        render_frame(RAMP, mono_header("PALETTE COLOR"))
