import pytest

from dicomweb.media_types import MediaRange, parse_accept, parse_media_type

# -- parse_media_type ---------------------------------------------------------


def test_parse_media_type_simple():
    assert parse_media_type("application/dicom") == ("application/dicom", {})


def test_parse_media_type_lowercases_type_and_param_names_but_not_values():
    assert parse_media_type('Multipart/Related; Type="Application/DICOM"; BOUNDARY=AbC') == (
        "multipart/related",
        {"type": "Application/DICOM", "boundary": "AbC"},
    )


def test_parse_media_type_dcmjs_unquoted():
    media_type, params = parse_media_type("multipart/related; type=application/dicom; boundary=abc")
    assert media_type == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "abc"}


@pytest.mark.parametrize(
    "value",
    [
        'multipart/related;type="application/dicom";boundary="abc"',
        '  multipart/related ;  type = "application/dicom" ;boundary=abc ; ',
        "multipart/related; type=application/dicom; boundary=abc;",
        "multipart/related; type=application/dicom;; boundary=abc",
        "multipart / related; type=application/dicom; boundary=abc",
    ],
)
def test_parse_media_type_whitespace_and_trailing_semicolon(value):
    assert parse_media_type(value) == ("multipart/related", {"type": "application/dicom", "boundary": "abc"})


def test_parse_media_type_quoted_value_with_separators_and_escapes():
    media_type, params = parse_media_type(r'multipart/related; boundary="a;b,c=d"; x="say \"hi\""; y=1')
    assert media_type == "multipart/related"
    assert params == {"boundary": "a;b,c=d", "x": 'say "hi"', "y": "1"}


def test_parse_media_type_first_duplicate_wins_and_bare_words_ignored():
    assert parse_media_type("text/plain; charset=utf-8; charset=latin-1; flag") == (
        "text/plain",
        {"charset": "utf-8"},
    )


def test_parse_media_type_unterminated_quote_is_tolerated():
    assert parse_media_type('multipart/related; boundary="abc') == ("multipart/related", {"boundary": "abc"})


@pytest.mark.parametrize("value", ["", "   ", "dicom", "application/", "/json", "a b/c", "*/json", "<html>"])
def test_parse_media_type_rejects_garbage(value):
    with pytest.raises(ValueError):
        parse_media_type(value)


# -- MediaRange ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_", "candidate", "expected"),
    [
        ("*/*", "application/dicom", True),
        ("image/*", "image/jpeg", True),
        ("image/*", "application/dicom", False),
        ("multipart/*", "multipart/related", True),
        ("application/dicom", "application/dicom", True),
        ("application/dicom", "Application/DICOM; transfer-syntax=*", True),
        ("application/dicom", "application/dicom+json", False),
        ("application/json", "application/dicom+json", False),
    ],
)
def test_media_range_matches(range_, candidate, expected):
    assert MediaRange.parse(range_).matches(candidate) is expected


def test_media_range_is_hashable_and_comparable():
    a = MediaRange.parse('multipart/related; type="application/dicom"')
    b = MediaRange.parse("multipart/related; type=application/dicom")
    assert a == b
    assert hash(a) == hash(b)


# -- parse_accept -------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_parse_accept_missing_means_anything(header):
    assert parse_accept(header) == [MediaRange("*/*")]
    assert parse_accept(header)[0].q == 1.0


def test_parse_accept_ohif():
    (rng,) = parse_accept('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert rng.media_type == "multipart/related"
    assert rng.related_type == "application/octet-stream"
    assert rng.transfer_syntaxes == ("*",)
    assert rng.q == 1.0
    assert rng.params == {"type": "application/octet-stream", "transfer-syntax": "*"}


def test_parse_accept_ohif_duplicated_transfer_syntax():
    (rng,) = parse_accept(
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1; transfer-syntax=*'
    )
    assert rng.transfer_syntaxes == ("1.2.840.10008.1.2.1", "*")
    assert rng.params["transfer-syntax"] == "1.2.840.10008.1.2.1"


def test_parse_accept_dicomweb_client():
    (rng,) = parse_accept('multipart/related; type="application/dicom"')
    assert (rng.media_type, rng.related_type, rng.transfer_syntaxes) == ("multipart/related", "application/dicom", ())
    (rng,) = parse_accept('multipart/related; type="*/*"')
    assert rng.related_type == "*/*"
    (rng,) = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1')
    assert rng.transfer_syntaxes == ("1.2.840.10008.1.2.1",)


def test_parse_accept_dcmjs_unquoted():
    (rng,) = parse_accept("multipart/related; type=application/dicom; boundary=abc")
    assert rng.related_type == "application/dicom"
    assert rng.params == {"type": "application/dicom", "boundary": "abc"}


def test_parse_accept_related_type_is_lowercased_and_only_for_multipart():
    (rng,) = parse_accept('multipart/related; type="Application/DICOM"')
    assert rng.related_type == "application/dicom"
    (rng,) = parse_accept("application/dicom; type=foo")
    assert rng.related_type is None


def test_parse_accept_json_list():
    ranges = parse_accept("application/dicom+json, application/json")
    assert [r.media_type for r in ranges] == ["application/dicom+json", "application/json"]
    assert all(r.q == 1.0 for r in ranges)


def test_parse_accept_browser():
    ranges = parse_accept("image/avif,image/webp,*/*;q=0.8")
    assert [(r.media_type, r.q) for r in ranges] == [("image/avif", 1.0), ("image/webp", 1.0), ("*/*", 0.8)]
    assert ranges[2].params == {}


def test_parse_accept_sorted_by_q_stable():
    ranges = parse_accept("text/html;q=0.5, application/json;q=0.9, image/png;q=0.5, application/dicom")
    assert [r.media_type for r in ranges] == ["application/dicom", "application/json", "text/html", "image/png"]


def test_parse_accept_java_default():
    ranges = parse_accept("text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2")
    assert [(r.media_type, r.q) for r in ranges][-2:] == [("*/*", 0.2), ("*/*", 0.2)]


def test_parse_accept_drops_q_zero_and_clamps():
    ranges = parse_accept("application/json;q=0, application/dicom+json;q=1.5, text/plain;q=0.000")
    assert [(r.media_type, r.q) for r in ranges] == [("application/dicom+json", 1.0)]


def test_parse_accept_comma_inside_quotes():
    (rng,) = parse_accept('multipart/related; type="application/dicom"; x="a, b"')
    assert rng.params["x"] == "a, b"


def test_parse_accept_skips_garbage():
    ranges = parse_accept("garbage, , application/json;q=abc, application/json;q=-1, application/dicom+json;q=nan, ")
    assert ranges == []
    ranges = parse_accept("garbage,application/dicom+json;q=0.7,;;,text/")
    assert [(r.media_type, r.q) for r in ranges] == [("application/dicom+json", 0.7)]


def test_parse_accept_all_q_zero_is_empty():
    assert parse_accept("*/*;q=0") == []
