"""The MRML side of the BiSCSegmentation 3D Slicer module: everything between the scene and the cascade library.

Every function takes the MRML scene (through :class:`scene.SceneContext`, which also holds the application
logic the module logics are registered on), so the same code runs inside 3D Slicer and on PyPI's
``slicer-core`` (tests, headless use). Nothing here imports Qt, and nothing imports torch, scipy or the
cascade at import time: Slicer must load the module even before its Python dependencies are installed.

Modules:
    scene         SceneContext, volume node <-> Volume (LPS geometry), loading/saving, subject hierarchy
    rois          Markups ROI nodes <-> KidneyROI (LPS mm), naming by side, checks before running
    terminology   standard codes, names and colors of the four output segments
    segmentation  output segmentation (sides, terminology, ownership), rough preview, label map export
    labelmaps     segments as cropped arrays straight from the binary labelmaps (no scene nodes)
    planning      per-segment volumes, tumor diameters, tumor/kidney ratios; table node; CSV; live updates
    models        which model to run (bundled, files, URL) and how to load it
    worker        background runs (thread or separate process) with progress polling and cancel
    proctree      the worker's process tree: own process group, no console on Windows, kill the whole tree
    devices       CUDA when usable else CPU (MPS only where tested), too-old torch, GPU out-of-memory fallback
    dependencies  pinned pip installs after one confirmation (with progress, or a reinstall), torch through
                  PyTorchUtils
    settings      remembered panel settings (QSettings-like store), Reset to defaults
    sampledata    the Sample Data phantom CT
    about         the module's help and acknowledgement text
    logic         BiSCLogic: the workflow facade the module widget, the self-test and the tests use
    selftest      the whole workflow on a phantom, checked step by step (Slicer self-test and pytest)
"""
