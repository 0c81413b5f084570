"""Which DICOM attributes live at which query level, and which ones the index matches on.

The lists follow PS3.18 Table 10.6.1-5 (QIDO-RS required return keys), PS3.4 C.6
(Query/Retrieve information model) and the union of keys other servers index
(see conformance/STATEMENT.md).
"""
from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("patient", "study", "series", "instance")


@dataclass(frozen=True)
class IndexedAttribute:
    keyword: str
    tag: str  # 8 hex digits, upper case, as in DICOM JSON
    vr: str
    level: str  # the level whose table holds the column
    column: str


INDEXED: tuple[IndexedAttribute, ...] = (
    IndexedAttribute("PatientID", "00100020", "LO", "study", "patient_id"),
    IndexedAttribute("PatientName", "00100010", "PN", "study", "patient_name"),
    IndexedAttribute("PatientBirthDate", "00100030", "DA", "study", "patient_birth_date"),
    IndexedAttribute("PatientSex", "00100040", "CS", "study", "patient_sex"),
    IndexedAttribute("StudyInstanceUID", "0020000D", "UI", "study", "study_uid"),
    IndexedAttribute("StudyDate", "00080020", "DA", "study", "study_date"),
    IndexedAttribute("StudyTime", "00080030", "TM", "study", "study_time"),
    IndexedAttribute("AccessionNumber", "00080050", "SH", "study", "accession_number"),
    IndexedAttribute("ReferringPhysicianName", "00080090", "PN", "study", "referring_physician_name"),
    IndexedAttribute("StudyID", "00200010", "SH", "study", "study_id"),
    IndexedAttribute("StudyDescription", "00081030", "LO", "study", "study_description"),
    IndexedAttribute("ModalitiesInStudy", "00080061", "CS", "study", "modalities"),
    IndexedAttribute("NumberOfStudyRelatedSeries", "00201206", "IS", "study", "num_series"),
    IndexedAttribute("NumberOfStudyRelatedInstances", "00201208", "IS", "study", "num_instances"),
    IndexedAttribute("SeriesInstanceUID", "0020000E", "UI", "series", "series_uid"),
    IndexedAttribute("Modality", "00080060", "CS", "series", "modality"),
    IndexedAttribute("SeriesNumber", "00200011", "IS", "series", "series_number"),
    IndexedAttribute("SeriesDescription", "0008103E", "LO", "series", "series_description"),
    IndexedAttribute("BodyPartExamined", "00180015", "CS", "series", "body_part_examined"),
    IndexedAttribute("SeriesDate", "00080021", "DA", "series", "series_date"),
    IndexedAttribute("SeriesTime", "00080031", "TM", "series", "series_time"),
    IndexedAttribute("PerformedProcedureStepStartDate", "00400244", "DA", "series", "pps_start_date"),
    IndexedAttribute("PerformedProcedureStepStartTime", "00400245", "TM", "series", "pps_start_time"),
    IndexedAttribute("NumberOfSeriesRelatedInstances", "00201209", "IS", "series", "num_instances"),
    IndexedAttribute("SOPInstanceUID", "00080018", "UI", "instance", "sop_uid"),
    IndexedAttribute("SOPClassUID", "00080016", "UI", "instance", "sop_class_uid"),
    IndexedAttribute("InstanceNumber", "00200013", "IS", "instance", "instance_number"),
    IndexedAttribute("Rows", "00280010", "US", "instance", "rows"),
    IndexedAttribute("Columns", "00280011", "US", "instance", "columns"),
    IndexedAttribute("BitsAllocated", "00280100", "US", "instance", "bits_allocated"),
    IndexedAttribute("NumberOfFrames", "00280008", "IS", "instance", "number_of_frames"),
    IndexedAttribute("ContentDate", "00080023", "DA", "instance", "content_date"),
    IndexedAttribute("ContentTime", "00080033", "TM", "instance", "content_time"),
)

BY_KEYWORD = {a.keyword: a for a in INDEXED}
BY_TAG = {a.tag: a for a in INDEXED}

# Attributes computed from the index, not taken from any one instance.
COMPUTED = {"ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
            "NumberOfSeriesRelatedInstances"}

# Returned by default at each level (PS3.18 Table 10.6.1-5), before includefield.
DEFAULT_RETURN = {
    "study": (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
        "SeriesDate", "SeriesTime", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "NumberOfSeriesRelatedInstances",
    ),
    "instance": (
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
        "NumberOfFrames",
    ),
}

# Keys of the upper levels that are returned with a lower-level query (PS3.18 10.6.3.3.1).
PARENT_RETURN = {
    "study": (),
    "series": ("StudyInstanceUID",),
    "instance": ("StudyInstanceUID", "SeriesInstanceUID"),
}

# Non-indexed attributes kept per study / series (taken from the first instance),
# so that includefield can return them without reading any blob.
STUDY_LEVEL_TAGS = frozenset({
    "00080005",  # SpecificCharacterSet
    "00080020", "00080030", "00080050", "00080051", "00080080", "00080081", "00080090",
    "00080096", "00081030", "00081032", "00081048", "00081049", "00081060", "00081062",
    "00081080", "00081110", "00100010", "00100020", "00100021", "00100024", "00100030",
    "00100032", "00100040", "00101000", "00101001", "00101002", "00101010", "00101020",
    "00101030", "00102160", "00102180", "001021B0", "00104000", "00200010", "0020000D",
    "00321032", "00321033", "00321060", "00401012",
})
SERIES_LEVEL_TAGS = frozenset({
    "00080021", "00080031", "00080060", "00080064", "00080070", "00080080", "00081010",
    "00081040", "0008103E", "00081050", "00081070", "00081090", "00081111", "00180015",
    "00181000", "00181020", "00181030", "00185100", "0020000E", "00200011", "00200052",
    "00201040", "00400244", "00400245", "00400253", "00400254", "00400275", "00400260",
})
