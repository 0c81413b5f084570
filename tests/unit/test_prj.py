"""The .prj → record mapping (gateway/services/prj.py): every documented element, tolerance of
what it does not know, and XML that must not be expanded or followed."""
from __future__ import annotations

import pytest

from gateway.services.prj import MAX_PRJ_BYTES, PrjError, parse_prj
from storage.metadata import DEFAULT_VIEWER_STATE

FULL = b"""<?xml version="1.0" encoding="utf-8"?>
<Project version="1">
  <Image type="CT" name="IMG0001.dcm"/>
  <ViewerState>
    <Rotation>90</Rotation>
    <Zoom>1.5</Zoom>
    <Window center="400" width="2000"/>
    <Pan x="10" y="-4.5"/>
    <Flip horizontal="true" vertical="false"/>
    <Crosshair on="yes"/>
  </ViewerState>
  <Tags><Tag>implant</Tag><Tag>implant</Tag><Tag> molar </Tag><Colour>red</Colour></Tags>
  <Annotations>
    <Annotation id="a1" type="line" label="mesial" colour="#ff0000">
      <Point x="10" y="20"/><Point x="30" y="40" z="5"/><Point x="oops"/>
      <Measurement name="length" value="12.5" unit="mm"/>
      <Text>check at recall</Text>
      <Style bold="1"/>
    </Annotation>
    <Annotation type="text"><Text>no id</Text></Annotation>
    <Group/>
  </Annotations>
  <Plugin name="x"><Anything/></Plugin>
</Project>"""


def test_every_documented_element():
    content = parse_prj(FULL)
    assert content.viewer_state == {"rotation": 90, "zoom": 1.5, "window": {"center": 400, "width": 2000},
                                    "pan": {"x": 10, "y": -4.5}, "flip": {"horizontal": True, "vertical": False}}
    assert content.object_type == "CT"
    assert content.tags == ["implant", "molar"]
    assert content.annotations == [
        {"id": "a1", "type": "line", "label": "mesial", "source": "prj", "attributes": {"colour": "#ff0000"},
         "points": [[10, 20], [30, 40, 5]], "measurements": [{"name": "length", "value": 12.5, "unit": "mm"}],
         "text": "check at recall"},
        {"id": "prj-2", "type": "text", "source": "prj", "text": "no id"}]
    assert sorted(content.ignored) == sorted(["viewerstate/crosshair", "tags/colour", "annotation[1]/point",
                                              "annotation[1]/style", "annotations/group", "plugin"])


def test_names_are_case_insensitive_and_window_has_other_spellings():
    content = parse_prj(b"<prj><viewerstate><ZOOM>2</ZOOM><WindowCenter>40</WindowCenter>"
                        b"<WindowWidth>350</WindowWidth></viewerstate></prj>")
    assert content.viewer_state["zoom"] == 2 and content.viewer_state["window"] == {"center": 40, "width": 350}


def test_values_that_do_not_parse_are_skipped():
    content = parse_prj(b"<Project><ViewerState><Zoom>big</Zoom><Rotation>720</Rotation>"
                        b"<Window center='x' width='-5'/></ViewerState><Image type='MR'/></Project>")
    assert content.viewer_state == DEFAULT_VIEWER_STATE
    assert content.object_type is None
    assert "viewerstate/zoom=big" in content.ignored and "image@type=MR" in content.ignored


def test_an_empty_project_is_the_defaults():
    content = parse_prj(b"<Project/>")
    assert (content.viewer_state, content.annotations, content.tags, content.ignored) == \
        (DEFAULT_VIEWER_STATE, [], [], [])


@pytest.mark.parametrize("data", [
    b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><p>&b;</p>',
    b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><p>&x;</p>',
    b'<?xml version="1.0"?><!DOCTYPE p SYSTEM "http://127.0.0.1:9/p.dtd"><p/>',
])
def test_dtds_and_entities_are_refused(data):
    with pytest.raises(PrjError, match="refused"):
        parse_prj(data)


@pytest.mark.parametrize("data, match", [(b"not xml at all", "not XML"), (b"<Project>", "not XML"),
                                         (b"<a>" + b" " * MAX_PRJ_BYTES + b"</a>", "larger")])
def test_what_is_not_a_prj(data, match):
    with pytest.raises(PrjError, match=match):
        parse_prj(data)
