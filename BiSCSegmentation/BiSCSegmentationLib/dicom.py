"""DICOM: which files make a series, who and what it is (for reports), and a DICOM Segmentation (SEG) of a
label map that references the source series, written with highdicom (``pip install "bisc-segmentation[dicom]"``).

The label map must be on the series' own grid, as bisc-segment writes it: its array's slice k is the k-th file
in GDCM's order (what SimpleITK read), so each SEG frame references exactly the CT image it was drawn on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .volume import Volume, VolumeError

# (tag, key) of the identification a report and a PACS need
_IDENT_TAGS = (("0010|0010", "patient_name"), ("0010|0020", "patient_id"), ("0008|0020", "study_date"),
               ("0008|0050", "accession_number"), ("0008|1030", "study_description"),
               ("0008|103e", "series_description"), ("0020|0011", "series_number"), ("0008|0060", "modality"),
               ("0020|000d", "study_instance_uid"), ("0020|000e", "series_instance_uid"))
# Codes as in the module's terminology (BiSCSegmentationSlicer/terminology.py): SNOMED CT
KIDNEY = ("64033007", "Kidney")
MASS = ("4147007", "Mass")
ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
ALTERED_STRUCTURE = ("49755003", "Morphologically Altered Structure")


class DicomError(VolumeError):
    """A DICOM input or output problem; the message says what to do."""


def series_files(folder) -> List[str]:
    """The files of the one DICOM series in ``folder``, in the order SimpleITK reads them (slice k = file k)."""
    import SimpleITK as sitk

    folder = Path(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(ids) != 1:
        raise DicomError(f"{folder}: expected one DICOM series, found {len(ids)}; put one series per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def series_identification(folder) -> Dict[str, str]:
    """Patient, study and series identification from the first file's header (empty fields left out)."""
    import SimpleITK as sitk

    files = series_files(folder)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    out = {"folder": Path(folder).name, "files": str(len(files))}
    for tag, key in _IDENT_TAGS:
        if reader.HasMetaDataKey(tag):
            value = reader.GetMetaData(tag).strip()
            if value:
                out[key] = value
    return out


def _require_highdicom():
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as exc:
        raise DicomError("writing DICOM SEG needs highdicom: pip install \"bisc-segmentation[dicom]\" "
                         "(or pip install highdicom)") from exc


def build_dicom_seg(labels: Volume, folder, model: Optional[Dict] = None, series_number: int = 900):
    """A highdicom Segmentation of ``labels`` (1 kidney, 2 renal tumor) referencing the series in ``folder``
    (segments marked semi-automatic when ``model["edited"]``: a person changed them after the model)."""
    _require_highdicom()
    import highdicom as hd
    import pydicom
    from pydicom.sr.coding import Code

    from . import __version__

    files = series_files(folder)
    sources = [pydicom.dcmread(f) for f in files]
    array = np.asarray(labels.array).astype(np.uint8)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if array.shape != (len(sources), rows, cols):
        raise DicomError(f"the label map ({array.shape[0]} slices of {array.shape[1]} x {array.shape[2]}) is not on "
                         f"the DICOM series' grid ({len(sources)} files of {rows} x {cols}); DICOM SEG needs the "
                         f"label map bisc-segment made from this series")
    name = (model or {}).get("name", "BiSC-UNet")
    algo = hd.AlgorithmIdentificationSequence(name=f"BiSC-UNet cascade ({name})"[:64], version=__version__,
                                              family=Code("123109", "DCM", "Artificial Intelligence"))
    # a segmentation a person edited after the model (the 3D Slicer module's export) is semi-automatic
    algorithm_type = (hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if (model or {}).get("edited")
                      else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC)
    segments = []
    for number, label, category, prop, region in (
            (1, "Kidney", ANATOMICAL_STRUCTURE, KIDNEY, None),
            (2, "Renal tumor", ALTERED_STRUCTURE, MASS, KIDNEY)):
        segments.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=Code(category[0], "SCT", category[1]),
            segmented_property_type=Code(prop[0], "SCT", prop[1]),
            algorithm_type=algorithm_type, algorithm_identification=algo,
            anatomic_regions=[Code(region[0], "SCT", region[1])] if region else None))
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="BiSCSegmentation",
        manufacturer_model_name=str(name)[:64], software_versions=__version__, device_serial_number="none",
        series_description="BiSC kidney and tumor (not for clinical use)", omit_empty_frames=False)


def source_uids(folder) -> List[str]:
    """SOP Instance UIDs of the series' files, in the order of the label map's slices."""
    import pydicom

    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in series_files(folder)]


def read_dicom_seg_labels(path, uids: Sequence[str]) -> np.ndarray:
    """The label array [slice, row, col] of a SEG written here, one slice per source image UID in ``uids``
    (a slice of an image the SEG does not reference is refused by highdicom)."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    return np.asarray(seg.get_pixels_by_source_instance(source_sop_instance_uids=list(uids), combine_segments=True,
                                                        skip_overlap_checks=True))


def add_dicom_seg(outputs, path, labels: Volume, folder, model: Optional[Dict] = None) -> Path:
    """Add a DICOM SEG to a set of outputs; the check reads it back and compares every voxel."""
    seg = build_dicom_seg(labels, folder, model)
    expected = np.asarray(labels.array).astype(np.uint8)
    uids = source_uids(folder)

    def write(tmp: Path) -> None:
        seg.save_as(str(tmp))

    def verify(tmp: Path) -> None:
        got = read_dicom_seg_labels(tmp, uids)
        if got.shape != expected.shape or not np.array_equal(got, expected):
            raise ValueError("segment voxels differ")

    return outputs.add(path, write, verify, "DICOM SEG")


__all__ = ["series_files", "series_identification", "build_dicom_seg", "add_dicom_seg", "read_dicom_seg_labels",
           "source_uids", "DicomError"]
