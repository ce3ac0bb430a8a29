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
    planning      per-segment volumes, tumor diameters, tumor/kidney ratios; table node; CSV; live updates
    models        which model to run (bundled, files, URL) and how to load it
    worker        background runs (thread or separate process) with progress polling and cancel
    dependencies  pinned pip installs after one confirmation, torch through PyTorchUtils
    logic         BiSCLogic: the workflow facade the module widget, the self-test and the tests use
    selftest      the whole workflow on a phantom, checked step by step (Slicer self-test and pytest)
    screenshots   offscreen VTK rendering of a scene for the README (not used by the module)
"""
