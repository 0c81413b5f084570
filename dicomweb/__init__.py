"""PS3.18 DICOMweb front door: STOW-RS, QIDO-RS, WADO-RS (and DELETE), under /dicom-web."""
from __future__ import annotations

from dicomweb import delete, qido, rendered, stow, wado
from dicomweb.common import PREFIX


def init_app(app, api) -> None:
    for module in (stow, qido, wado, rendered, delete):
        api.register_blueprint(module.blp)


__all__ = ["PREFIX", "init_app"]
