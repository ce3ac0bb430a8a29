"""SC-UNet: a 3D U-Net whose decoder splits into three branches (labels, kidney edge, tumor edge).

Paper (Wang et al. 2019, Sec. 2.1, Fig. 2): three down groups of convolutions each followed by max-pooling,
a bottom group, two shared up groups (y_up^1, y_up^2); after y_up^2 three up-sampling branches, each with
its own skip connection to the first down group, predict (a) background/kidney/tumor, (b) kidney edge and
(c) tumor edge. Width, depth and normalisation are configuration; the network is fully convolutional, so
any input whose sizes are multiples of ``2 ** len(pooling)`` works.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

NORMS = ("instance", "batch", "none")


@dataclass
class SCUNetConfig:
    """Architecture of one SC-UNet; stored in every model file."""

    in_channels: int = 1
    widths: List[int] = field(default_factory=lambda: [16, 32, 64, 128])  # one per resolution level
    num_classes: int = 3          # background, kidney, tumor
    edge_classes: int = 2         # background, edge (softmax, so Eq. 1 applies unchanged)
    norm: str = "instance"
    branch_levels: int = 1        # how many of the last up groups are per-branch (paper: the last one)

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if len(self.widths) < 2:
            raise ValueError("widths needs at least two levels")
        if not 1 <= self.branch_levels <= len(self.widths) - 1:
            raise ValueError(f"branch_levels must be in 1..{len(self.widths) - 1}")
        if any(int(w) <= 0 for w in self.widths):
            raise ValueError(f"widths must be positive, got {self.widths}")

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "SCUNetConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        cfg = cls(**known)
        cfg.widths = [int(w) for w in cfg.widths]
        cfg.validate()
        return cfg


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(ch, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(ch)
    return nn.Identity()


class ConvGroup(nn.Sequential):
    """Two (conv 3x3x3 -> norm -> ReLU) layers: one 'group' of the paper's U-Net."""

    def __init__(self, cin: int, cout: int, norm: str):
        bias = norm == "none"
        super().__init__(
            nn.Conv3d(cin, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True))


class UpGroup(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip connection, then a conv group."""

    def __init__(self, cin: int, cskip: int, cout: int, norm: str):
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cskip, 2, stride=2)
        self.conv = ConvGroup(2 * cskip, cout, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Branch(nn.Module):
    """One decoder branch: its own up groups (with their own skips) and a 1x1x1 head."""

    def __init__(self, widths: List[int], levels: int, out_ch: int, norm: str):
        super().__init__()
        ups = []
        for lvl in range(levels, 0, -1):  # from level `levels` down to level 1 -> resolution 0
            ups.append(UpGroup(widths[lvl], widths[lvl - 1], widths[lvl - 1], norm))
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv3d(widths[0], out_ch, 1)

    def forward(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        for up, skip in zip(self.ups, skips):
            x = up(x, skip)
        return self.head(x)


class SCUNet(nn.Module):
    """Returns ``(labels, kidney_edge, tumor_edge)`` logits, each ``(N, C, D, H, W)`` like the input."""

    def __init__(self, config: SCUNetConfig = None):
        super().__init__()
        self.config = config = config or SCUNetConfig()
        config.validate()
        w, norm = config.widths, config.norm
        self.down = nn.ModuleList([ConvGroup(config.in_channels, w[0], norm)]
                                  + [ConvGroup(w[i - 1], w[i], norm) for i in range(1, len(w))])
        self.pool = nn.MaxPool3d(2)
        n_shared = len(w) - 1 - config.branch_levels
        self.shared_up = nn.ModuleList([UpGroup(w[lvl], w[lvl - 1], w[lvl - 1], norm)
                                        for lvl in range(len(w) - 1, len(w) - 1 - n_shared, -1)])
        bl = config.branch_levels
        self.label_branch = Branch(w, bl, config.num_classes, norm)
        self.kidney_edge_branch = Branch(w, bl, config.edge_classes, norm)
        self.tumor_edge_branch = Branch(w, bl, config.edge_classes, norm)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for i, group in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = group(x)
            skips.append(x)
        return skips[-1], skips[:-1]

    def decode_shared(self, x: torch.Tensor, skips: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        remaining = skips[::-1]  # deepest skip first
        for up in self.shared_up:
            x = up(x, remaining.pop(0))
        return x, remaining

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        x, skips = self.encode(x)
        x, remaining = self.decode_shared(x, skips)
        return (self.label_branch(x, remaining), self.kidney_edge_branch(x, remaining),
                self.tumor_edge_branch(x, remaining))

    def forward_labels(self, x: torch.Tensor) -> torch.Tensor:
        """Inference path: only the label branch (the edge branches only shape training)."""
        self.check_input(x)
        x, skips = self.encode(x)
        x, remaining = self.decode_shared(x, skips)
        return self.label_branch(x, remaining)

    def check_input(self, x: torch.Tensor) -> None:
        div = self.config.divisor
        if x.dim() != 5 or any(s % div for s in x.shape[2:]):
            raise ValueError(f"SC-UNet input must be (N, C, D, H, W) with D, H, W multiples of {div}; "
                             f"got {tuple(x.shape)}")

