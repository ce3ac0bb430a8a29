"""The module's Sample Data entry: a phantom abdominal CT to try the module without a scan of one's own.

The CT is not stored in the repository (a realistic CT with noise does not compress below several MB); the
bundled phantom generator (BiSCSegmentationLib.phantom, the one the bundled models were trained and tested
on) makes it, always the same (seed ``SEED``: two kidneys, a 35 mL tumor in one of them; 465 x 465 x 54
voxels, 0.86 x 0.86 x 5 mm), in about a second, into Slicer's sample data cache, next to its ground-truth
label map. Later loads read the cached file. Sample Data shows it under *BiSCSegmentation*.
"""
from __future__ import annotations

import os
from typing import Optional

CATEGORY = "BiSCSegmentation"
SAMPLE_NAME = "BiSCPhantomCT"
NODE_NAME = "BiSC phantom CT"
SEED = 2
FILE_NAME = f"BiSCPhantomCT-seed{SEED}.nrrd"
THUMBNAIL = os.path.join("Resources", "Icons", "BiSCPhantomCT.png")


def make_sample_files(folder: str, seed: int = SEED) -> str:
    """Write the phantom CT (and its label map) into ``folder`` unless already there; returns the CT's path.
    Written under a temporary name and renamed, so an interrupted run leaves no half file."""
    from BiSCSegmentationLib import phantom
    from BiSCSegmentationLib.volume import write_volume

    name = FILE_NAME if seed == SEED else f"BiSCPhantomCT-seed{seed}.nrrd"
    ct_path = os.path.join(folder, name)
    labels_path = ct_path[:-len(".nrrd")] + "-labels.nrrd"
    if os.path.isfile(ct_path) and os.path.isfile(labels_path):
        return ct_path
    os.makedirs(folder, exist_ok=True)
    ct, labels = phantom.make_case(seed)
    for volume, path in ((labels, labels_path), (ct, ct_path)):
        write_volume(volume, path, force=True)  # atomic: a temporary file beside it, renamed
    return ct_path


def source_arguments(module_dir: str, downloader) -> dict:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` for the entry;
    ``downloader(source)`` makes and loads the CT (Sample Data calls it instead of downloading)."""
    return {"category": CATEGORY, "sampleName": SAMPLE_NAME, "nodeNames": NODE_NAME, "fileNames": FILE_NAME,
            "uris": None, "thumbnailFileName": os.path.join(module_dir, THUMBNAIL), "loadFileType": "VolumeFile",
            "customDownloader": downloader}


def cache_folder(slicer_cache: Optional[str] = None) -> str:
    """Where the sample is kept: Slicer's sample data cache when given, else the user's cache folder."""
    if slicer_cache:
        return os.path.join(slicer_cache, "BiSCSegmentation")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bisc-segmentation", "sample-data")
