"""pynetdicom's own ceiling for C-STORE: a storage SCP that does nothing but keep the files.

    python -m bench.bare_scp PORT FOLDER

Every storage SOP class in every transfer syntax, data sets spooled to disk as they arrive
(``STORE_RECV_CHUNKED_DATASET``, as the gateway's listener does), then moved into FOLDER with an
fsync of the file (the durability the gateway and Orthanc give). No parsing, no index, no
checks: what is left of a C-STORE's cost is pynetdicom's and the disk's.
"""
from __future__ import annotations

import os
import sys
import tempfile

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt


def main(port: int, folder: str) -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = folder  # the spool on the same file system: a rename, not a copy
    count = 0

    def on_store(event):
        nonlocal count
        count += 1
        path = event.dataset_path
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(path, os.path.join(folder, f"{count:07d}.dcm"))
        return 0x0000

    ae = AE("BARESCP")
    ae.maximum_pdu_size = 0
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
