"""Blob stores: where the received DICOM bytes and derived objects live."""
