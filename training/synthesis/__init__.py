"""Realistic whole-abdomen CT synthesis for training (issue #16): BTCV anatomy + synthesized body, KiTS19
tumors, SynthSeg-style appearance by contrast phase. See docs/synthesis.md."""
from .appearance import PHASES
from .core import read_btcv, synthesize_case

__all__ = ["synthesize_case", "read_btcv", "PHASES"]
