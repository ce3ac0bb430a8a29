"""What the module says about itself: the help and acknowledgement texts (Slicer shows them at the top of the
module panel). They link to the project's own documentation, name the model in use with its training data
and its license, and say plainly that this is not for clinical use."""
from __future__ import annotations

import html
from typing import Optional

# The repository's address; the extension's CMakeLists.txt (BISC_REPOSITORY_URL) states the same (tested).
REPOSITORY_URL = "https://github.com/BiSCSegmentation/BiSCSegmentation"
DOCS_URL = f"{REPOSITORY_URL}/blob/main/docs/slicer.md"
LICENSE_URL = f"{REPOSITORY_URL}/blob/main/LICENSE"
WEIGHTS_LICENSE_URL = f"{REPOSITORY_URL}/blob/main/BiSCSegmentation/BiSCSegmentationLib/models/LICENSE-weights.md"
NOT_CLINICAL = "Not a medical device and not for clinical use: check every result."


def model_entry(name: Optional[str] = None) -> dict:
    from .models import bundled_models, default_bundled

    name = name or default_bundled()
    entry = dict(bundled_models().get(name) or {})
    entry["name"] = name
    return entry


def model_sentence(name: Optional[str] = None) -> str:
    """One sentence on the bundled model: its name, what it was trained on, its license."""
    entry = model_entry(name)
    if not entry.get("name"):
        return "No bundled model is installed; the module runs the model files you choose."
    return (f"Bundled model in use by default: {entry['name']}, trained on "
            f"{entry.get('training_data', 'data not stated')}. Its weights are licensed "
            f"{entry.get('license', 'as stated in models.json')}.")


def help_text(name: Optional[str] = None) -> str:
    return (
        "Segment the kidneys and renal tumors in an abdominal CT with the BiSC-UNet cascade: locate the kidneys, "
        "check and correct each kidney's box, segment, edit the masks, and read volumes, tumor diameters and "
        "tumor-to-kidney ratios for surgical planning. Try it on <i>Sample Data &gt; BiSCSegmentation &gt; "
        "BiSCPhantomCT</i>.<br><br>"
        f"{html.escape(model_sentence(name))} Other models: <i>Model</i> in the Input section.<br><br>"
        f"<b>{html.escape(NOT_CLINICAL)}</b><br><br>"
        f"Documentation: <a href=\"{DOCS_URL}\">{DOCS_URL}</a>")


def acknowledgement_text() -> str:
    return (
        "Method: Wang C., He Y., Qi X., Zhao Z., Yang G., et al., <i>BiSC-UNet: A fine segmentation framework "
        "for kidney and renal tumor</i>, KiTS19 challenge, MICCAI 2019 (hal-02358682). "
        "Data: KiTS19 label maps (Heller N. et al., arXiv:1904.00445, CC BY-NC-SA 4.0); the bundled weights are "
        "trained on synthetic CT built around them. PyTorch comes through the PyTorch extension. "
        f"Code: <a href=\"{LICENSE_URL}\">Apache License 2.0</a>; bundled weights: "
        f"<a href=\"{WEIGHTS_LICENSE_URL}\">CC BY-NC-SA 4.0</a>. {html.escape(NOT_CLINICAL)}")
