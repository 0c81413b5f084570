"""The legacy desktop viewer's ``.prj`` sidecar (XML, beside the image, same name) → a metadata
record: the one place that knows the mapping. No sample of the format was available; this is
the mapping we define and document (README, "Image metadata"):

.. code-block:: xml

    <Project version="1">                          <!-- any root element name -->
      <Image type="CT" name="IMG0001.dcm"/>        <!-- type: CT or 2D (else: from the image) -->
      <ViewerState>
        <Rotation>90</Rotation>                    <!-- degrees, clockwise -->
        <Zoom>1.5</Zoom>
        <Window center="400" width="2000"/>        <!-- or <WindowCenter>/<WindowWidth>, <Level>/<Width> -->
        <Pan x="10" y="-4"/>
        <Flip horizontal="true" vertical="false"/>
      </ViewerState>
      <Tags><Tag>implant</Tag></Tags>
      <Annotations>
        <Annotation id="a1" type="line" label="mesial">
          <Point x="10" y="20"/><Point x="30" y="40" z="5"/>
          <Measurement name="length" value="12.5" unit="mm"/>
          <Text>check at recall</Text>
        </Annotation>
      </Annotations>
    </Project>

→ ``viewerState {rotation, zoom, window {center, width}, pan {x, y}, flip {horizontal,
vertical}}``, ``tags``, ``type``, and per annotation ``{"id", "type", "label", "points": [[x,
y(, z)]], "measurements": [{"name", "value", "unit"}], "text", "attributes": {other XML
attributes}, "source": "prj"}`` (an annotation without ``id`` gets ``prj-<n>``).

Element and attribute names match case-insensitively; values that do not parse (``zoom="big"``)
and elements the mapping does not know are tolerated: skipped, and listed in
:attr:`PrjContent.ignored` (recorded with the record's source). The XML is parsed by
``defusedxml``: a DTD, an entity declaration or an external reference is refused
(:class:`PrjError`), so no entity is ever expanded and no file or URL is read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from storage.metadata import DEFAULT_VIEWER_STATE, merge_viewer_state

logger = logging.getLogger(__name__)

MAX_PRJ_BYTES = 4 * 1024 * 1024
MAX_TAG_LENGTH = 64
MAX_TAGS = 40


class PrjError(ValueError):
    """Not a .prj file we can read (not XML, a DTD or entities, too large)."""


@dataclass
class PrjContent:
    viewer_state: dict[str, Any] = field(default_factory=lambda: merge_viewer_state(DEFAULT_VIEWER_STATE, {}))
    annotations: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    object_type: str | None = None
    ignored: list[str] = field(default_factory=list)  # paths of what was not understood


def _name(element) -> str:
    tag = element.tag if isinstance(element.tag, str) else ""
    return tag.rsplit("}", 1)[-1].lower()  # without a namespace


def _attr(element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if key.rsplit("}", 1)[-1].lower() == name:
            return value
    return None


def _number(text: str | None) -> float | int | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return int(value) if value.is_integer() else value


def _bool(text: str | None) -> bool | None:
    value = (text or "").strip().lower()
    return True if value in ("1", "true", "yes") else False if value in ("0", "false", "no") else None


def parse_prj(data: bytes) -> PrjContent:
    if len(data) > MAX_PRJ_BYTES:
        raise PrjError(f"larger than {MAX_PRJ_BYTES} bytes")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise PrjError(f"refused: {type(exc).__name__} (a DTD, entity or external reference)") from None
    except SafeET.ParseError as exc:
        raise PrjError(f"not XML: {exc}") from None
    content = PrjContent()
    for child in root:
        name = _name(child)
        if name == "viewerstate":
            _viewer_state(child, content)
        elif name == "annotations":
            for n, item in enumerate(child):
                if _name(item) == "annotation":
                    content.annotations.append(_annotation(item, n + 1, content))
                else:
                    content.ignored.append(f"annotations/{_name(item)}")
        elif name == "tags":
            for item in child:
                text = (item.text or "").strip()
                if _name(item) == "tag" and text in content.tags:
                    continue  # the same tag twice
                if _name(item) == "tag" and 0 < len(text) <= MAX_TAG_LENGTH and len(content.tags) < MAX_TAGS:
                    content.tags.append(text)
                else:
                    content.ignored.append(f"tags/{_name(item)}")
        elif name == "image":
            kind = (_attr(child, "type") or "").strip().upper()
            if kind in ("CT", "2D"):
                content.object_type = kind
            elif kind:
                content.ignored.append(f"image@type={kind}")
        else:
            content.ignored.append(name)
    return content


def _viewer_state(element, content: PrjContent) -> None:
    changes: dict[str, Any] = {}
    window: dict[str, Any] = {}
    for child in element:
        name = _name(child)
        if name in ("rotation", "zoom"):
            value = _number(child.text)
            valid = value is not None and (-360 <= value <= 360 if name == "rotation" else 0 < value <= 100)
            if valid:
                changes[name] = value
            else:
                content.ignored.append(f"viewerstate/{name}={(child.text or '').strip()[:40]}")
        elif name == "window":
            for part in ("center", "width"):
                value = _number(_attr(child, part))
                if value is not None and (part == "center" or value > 0):
                    window[part] = value
        elif name in ("windowcenter", "level", "windowlevel"):
            if (value := _number(child.text)) is not None:
                window["center"] = value
        elif name == "windowwidth" or name == "width":
            if (value := _number(child.text)) is not None and value > 0:
                window["width"] = value
        elif name == "pan":
            pan = {axis: v for axis in ("x", "y") if (v := _number(_attr(child, axis))) is not None}
            if pan:
                changes["pan"] = pan
        elif name == "flip":
            flip = {side: v for side in ("horizontal", "vertical") if (v := _bool(_attr(child, side))) is not None}
            if flip:
                changes["flip"] = flip
        else:
            content.ignored.append(f"viewerstate/{name}")
    if window:
        changes["window"] = window
    content.viewer_state = merge_viewer_state(content.viewer_state, changes)


def _annotation(element, n: int, content: PrjContent) -> dict[str, Any]:
    known = {"id", "type", "label"}
    out: dict[str, Any] = {"id": _attr(element, "id") or f"prj-{n}", "type": (_attr(element, "type") or "unknown"),
                           "source": "prj"}
    if (label := _attr(element, "label")) is not None:
        out["label"] = label
    extra = {k.rsplit("}", 1)[-1]: v for k, v in element.attrib.items() if k.rsplit("}", 1)[-1].lower() not in known}
    if extra:
        out["attributes"] = extra
    points, measurements, texts = [], [], []
    for child in element:
        name = _name(child)
        if name == "point":
            coords = [_number(_attr(child, axis)) for axis in ("x", "y", "z")]
            if coords[0] is not None and coords[1] is not None:
                points.append([c for c in coords if c is not None])
            else:
                content.ignored.append(f"annotation[{n}]/point")
        elif name == "measurement":
            value = _number(_attr(child, "value"))
            measurements.append({"name": _attr(child, "name") or "value", "value": value,
                                 "unit": _attr(child, "unit")})
        elif name == "text":
            texts.append((child.text or "").strip())
        else:
            content.ignored.append(f"annotation[{n}]/{name}")
    if points:
        out["points"] = points
    if measurements:
        out["measurements"] = measurements
    if texts:
        out["text"] = "\n".join(texts)
    return out


__all__ = ["MAX_PRJ_BYTES", "PrjContent", "PrjError", "parse_prj"]
