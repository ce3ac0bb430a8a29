"""BiSCSegmentation's computational core: plain Python (numpy, scipy, torch, SimpleITK), no Slicer or Qt.

The CLI, the training package and the 3D Slicer module all import it. Submodules:
volume (geometry + I/O), network (SC-UNet), losses (Eq. 1, Canny edges), roi (kidney boxes),
resample, registry (the bundled model list), model_file (model files, bundled models), decision
(probabilities -> labels), cascade (inference), phantom (synthetic CT),
metrics (Dice, surface Dice, volumes, diameters).
"""
__version__ = "0.1.0"
