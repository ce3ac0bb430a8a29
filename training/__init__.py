"""BiSC-UNet training package: KiTS19 data, the two SC-UNet trainings, cascade evaluation.

Imports the core (BiSCSegmentationLib); the core never imports this package.
"""
