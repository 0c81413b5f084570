"""Thumbnails of every series (derived objects ``thumbnail/{256,512}.{jpeg,png}``): the image
fitted in a square of that edge, keeping its aspect ratio. 2D images (panoramic, intraoral,
photos) as they are; a volume (CT) as its middle slice, windowed by its header's window
(else its own value range). A built-in generator, entry point ``thumbnails``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.imaging import render_frame
from plugins.hookspecs import hookimpl
from plugins.previews.generators import Output, SeriesInput, Slice

SIZES = (256, 512)
FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}


def thumbnail_name(size: int, image_format: str) -> str:
    return f"thumbnail/{size}.{image_format}"


class Thumbnails:
    name = "thumbnails"

    def params(self, series: SeriesInput, settings) -> dict | None:
        return {"sizes": list(SIZES), "formats": sorted(FORMATS), "quality": settings["previews.thumbnail_quality"]}

    def start(self, series: SeriesInput, params: dict, scratch: Path, version: str) -> "ThumbnailSession":
        return ThumbnailSession(series, params, scratch)


class ThumbnailSession:
    def __init__(self, series: SeriesInput, params: dict, scratch: Path):
        self.series = series
        self.params = params
        self.scratch = scratch
        self.chosen = series.middle.index
        self.images: list[Output] = []
        self.tried: set[int] = set()

    def wants(self, item: Slice) -> bool:
        return item.index == self.chosen

    def prepare(self, item: Slice, pixels: np.ndarray, header) -> list[tuple[str, bytes]]:
        made = []
        for size in self.params["sizes"]:
            for image_format in self.params["formats"]:
                media = FORMATS[image_format]
                data = render_frame(pixels, header, media_type=media, viewport=(size, size),
                                    quality=self.params["quality"] if image_format == "jpeg" else None,
                                    frame_number=item.frame if (item.record.number_of_frames or 1) > 1 else None)
                made.append((thumbnail_name(size, image_format), data))
        return made

    def add(self, item: Slice, prepared: list[tuple[str, bytes]]) -> None:
        for name, data in prepared:
            path = self.scratch / name.replace("/", "-")
            path.write_bytes(data)
            self.images.append(Output(name, FORMATS[name.rsplit(".", 1)[1]], path,
                                      {"slice_index": item.index, "sop_uid": item.record.sop_uid}))

    def skip(self, item: Slice, reason: str) -> None:
        pass  # the series has no thumbnail of this version; the slice's dead-letter job says why

    def finish(self) -> list[Output]:
        return self.images


@hookimpl
def derived_generators(settings):
    return [Thumbnails()]
