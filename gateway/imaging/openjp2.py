"""JPEG 2000 encoding from a numpy array into memory, straight through OpenJPEG's C API.

glymur's high-level ``Jp2k`` does not fit a per-slice encoder: it writes files only (a file on
tmpfs per codestream, read back), validates its arguments and sets ctypes signatures on every
call, and parses the file it has just written into a ``Jp2k`` object nobody reads. Here the library glymur found (``glymur.lib.openjp2``, with its
structure layouts) is driven directly: the samples are copied once into OpenJPEG's image, the
codestream is written to a memory stream, and every OpenJPEG failure raises
:class:`OpenJpegError`. The calls release the GIL: several threads encode on several cores.
"""
from __future__ import annotations

import ctypes

import numpy as np
from glymur.lib import openjp2 as _glymur

CODEC_J2K = 0
CLRSPC_SRGB, CLRSPC_GRAY = 1, 2
# OpenJPEG writes through its stream's buffer: a preview's codestream fits in one write call.
STREAM_BUFFER = 1 << 20
WRITE_FAILED = ctypes.c_size_t(-1).value


class OpenJpegError(RuntimeError):
    """OpenJPEG refused the image or its parameters, or failed to encode."""


_WRITE_FN = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_SKIP_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_SEEK_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p)
_MSG_FN = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)


def _load():
    if _glymur.OPENJP2 is None:
        raise OpenJpegError("the OpenJPEG library (Debian's libopenjp2-7) was not found")
    # A CDLL of our own: glymur reassigns argtypes and restype of its function objects per call.
    lib = ctypes.CDLL(_glymur.OPENJP2._name)
    codec, stream, boolean, p = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p
    image_p = ctypes.POINTER(_glymur.ImageType)
    signatures = {
        "opj_create_compress": ([ctypes.c_int], codec),
        "opj_destroy_codec": ([codec], None),
        "opj_set_default_encoder_parameters": ([ctypes.POINTER(_glymur.CompressionParametersType)], None),
        "opj_setup_encoder": ([codec, ctypes.POINTER(_glymur.CompressionParametersType), image_p], boolean),
        "opj_codec_set_threads": ([codec, ctypes.c_int], boolean),
        "opj_set_error_handler": ([codec, _MSG_FN, p], boolean),
        "opj_set_warning_handler": ([codec, _MSG_FN, p], boolean),
        "opj_image_create": ([ctypes.c_uint32, ctypes.POINTER(_glymur.ImageComptParmType), ctypes.c_int], image_p),
        "opj_image_destroy": ([image_p], None),
        "opj_stream_create": ([ctypes.c_size_t, boolean], stream),
        "opj_stream_destroy": ([stream], None),
        "opj_stream_set_write_function": ([stream, _WRITE_FN], None),
        "opj_stream_set_skip_function": ([stream, _SKIP_FN], None),
        "opj_stream_set_seek_function": ([stream, _SEEK_FN], None),
        "opj_start_compress": ([codec, image_p, stream], boolean),
        "opj_encode": ([codec, stream], boolean),
        "opj_end_compress": ([codec, stream], boolean),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    defaults = _glymur.CompressionParametersType()
    lib.opj_set_default_encoder_parameters(ctypes.byref(defaults))
    return lib, bytes(defaults)


_lib, _default_parameters = _load()


class _Sink:
    """The memory an OpenJPEG output stream writes to (it may skip and seek back)."""

    def __init__(self):
        self.data = bytearray()
        self.position = 0
        self.messages: list[str] = []
        # Kept referenced as long as the stream lives: OpenJPEG holds bare pointers to them.
        self.write_fn = _WRITE_FN(self._write)
        self.skip_fn = _SKIP_FN(self._skip)
        self.seek_fn = _SEEK_FN(self._seek)
        self.error_fn = _MSG_FN(self._error)
        self.warning_fn = _MSG_FN(self._warning)

    def _write(self, buffer, size, _user):
        # OpenJPEG retries a write that returns 0 for ever: a failure must return (size_t) -1, and
        # an exception escaping a ctypes callback would return 0.
        try:
            end = self.position + size
            if self.position == len(self.data):
                self.data += ctypes.string_at(buffer, size)
            else:
                if end > len(self.data):
                    self.data.extend(bytes(end - len(self.data)))
                self.data[self.position:end] = ctypes.string_at(buffer, size)
            self.position = end
            return size
        except Exception as exc:  # noqa: BLE001 - reported through the codec's failure
            self.messages.append(f"writing the codestream to memory failed: {exc!r}")
            return WRITE_FAILED

    def _skip(self, size, _user):
        if self.position + size < 0:
            return -1
        self.position += size
        return size

    def _seek(self, offset, _user):
        if offset < 0:
            return 0
        self.position = offset
        return 1

    def _error(self, message, _user):
        self.messages.append(message.decode(errors="replace").strip())

    def _warning(self, message, _user):
        self.messages.append("warning: " + message.decode(errors="replace").strip())


def encode_j2k(samples: np.ndarray, *, ratio: float | None, resolutions: int, threads: int = 0) -> bytes:
    """A raw J2K codestream of unsigned 8/16-bit samples (rows × columns, or rows × columns × 3
    for RGB with the colour transform), reversible 5/3 wavelet, one quality layer at ``ratio``
    relative to the samples' bits (None or ≤ 1: lossless), ``resolutions`` levels, one tile.
    ``threads`` 0: OpenJPEG encodes in the calling thread."""
    if samples.dtype == np.uint8:
        precision = 8
    elif samples.dtype == np.uint16:
        precision = 16
    else:
        raise OpenJpegError(f"samples of type {samples.dtype} are not unsigned 8 or 16 bit")
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if samples.ndim != 3 or samples.shape[2] not in (1, 3) or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise OpenJpegError(f"an image of shape {samples.shape} is not rows × columns (× 3)")
    rows, columns, components = samples.shape

    parameters = _glymur.CompressionParametersType.from_buffer_copy(_default_parameters)
    parameters.codec_fmt = CODEC_J2K
    parameters.tcp_numlayers = 1
    parameters.tcp_rates[0] = float(ratio) if ratio and ratio > 1 else 0.0  # 0: lossless
    parameters.cp_disto_alloc = 1
    parameters.numresolution = resolutions
    parameters.tcp_mct = 1 if components == 3 else 0
    component = (_glymur.ImageComptParmType * components)()
    for c in component:
        c.dx = c.dy = 1
        c.w, c.h = columns, rows
        c.prec = c.bpp = precision
    sink = _Sink()
    image = codec = stream = None
    try:
        image = _lib.opj_image_create(components, component, CLRSPC_SRGB if components == 3 else CLRSPC_GRAY)
        if not image:
            raise OpenJpegError(f"OpenJPEG could not allocate an image of {columns}×{rows}×{components}")
        header = image.contents
        header.x0 = header.y0 = 0
        header.x1, header.y1 = columns, rows
        for k in range(components):
            plane = np.ctypeslib.as_array(header.comps[k].data, shape=(rows, columns))
            np.copyto(plane, samples[:, :, k], casting="unsafe")
        codec = _lib.opj_create_compress(CODEC_J2K)
        if not codec:
            raise OpenJpegError("OpenJPEG could not create a J2K encoder")
        _lib.opj_set_error_handler(codec, sink.error_fn, None)
        _lib.opj_set_warning_handler(codec, sink.warning_fn, None)
        _check(_lib.opj_setup_encoder(codec, ctypes.byref(parameters), image), "opj_setup_encoder", sink)
        _check(_lib.opj_codec_set_threads(codec, threads), "opj_codec_set_threads", sink)
        stream = _lib.opj_stream_create(STREAM_BUFFER, 0)
        if not stream:
            raise OpenJpegError("OpenJPEG could not create an output stream")
        _lib.opj_stream_set_write_function(stream, sink.write_fn)
        _lib.opj_stream_set_skip_function(stream, sink.skip_fn)
        _lib.opj_stream_set_seek_function(stream, sink.seek_fn)
        _check(_lib.opj_start_compress(codec, image, stream), "opj_start_compress", sink)
        _check(_lib.opj_encode(codec, stream), "opj_encode", sink)
        _check(_lib.opj_end_compress(codec, stream), "opj_end_compress", sink)
    finally:
        if stream:
            _lib.opj_stream_destroy(stream)  # flushes nothing more: opj_end_compress has
        if codec:
            _lib.opj_destroy_codec(codec)
        if image:
            _lib.opj_image_destroy(image)
    # A codestream starts with SOC and ends with EOC.
    if sink.data[:2] != b"\xff\x4f" or sink.data[-2:] != b"\xff\xd9":
        raise OpenJpegError(f"OpenJPEG wrote no complete codestream ({len(sink.data)} bytes)")
    return bytes(sink.data)


def _check(ok: int, call: str, sink: _Sink) -> None:
    if not ok:
        detail = "; ".join(sink.messages) or "no message"
        raise OpenJpegError(f"OpenJPEG {call} failed: {detail}")
