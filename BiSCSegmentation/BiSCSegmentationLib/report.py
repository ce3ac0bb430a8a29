"""The PDF report a planning meeting reads: identification, per-kidney volumes, a tumor table with size category
and R.E.N.A.L. nephrometry, key images (each tumor's axial slice with its largest axial diameter drawn, a
coronal overview), the run's quality warnings, the model, and "not for clinical use" on every page.

Drawn with matplotlib's PDF backend through ``Figure`` objects (no pyplot state: safe in Slicer's process),
written through :class:`outputs.OutputSet` (all or nothing, read back with pypdf when it is installed).
"""
from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import seg_nrrd
from .outputs import OutputError

A4 = (8.27, 11.69)
DISCLAIMER = "NOT FOR CLINICAL USE - automatic measurements of a segmentation; check every number on the images."
KIDNEY_RGB = tuple(c / 255 for c in seg_nrrd.KIDNEY_RGB)     # the module's segment colors
TUMOR_RGB = tuple(c / 255 for c in seg_nrrd.MASS_RGB)
CT_WINDOW = (-160.0, 240.0)                        # abdominal soft-tissue window (level 40, width 400)
IMAGES_PER_PAGE = 4


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.backends.backend_pdf import PdfPages
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise OutputError("the PDF report needs matplotlib: pip install \"bisc-segmentation[report]\" (or pip "
                          "install matplotlib); nothing was written") from exc
    matplotlib.rcParams["pdf.fonttype"] = 42       # TrueType text: searchable and extractable
    return Figure, PdfPages


def _fmt(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(ax, header: Sequence[str], rows: List[Sequence[str]], fontsize: float = 7.5):
    ax.axis("off")
    if not rows:
        ax.text(0, 0.5, "none", fontsize=fontsize, va="center")
        return
    t = ax.table(cellText=[list(r) for r in rows], colLabels=list(header), loc="upper left", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(fontsize)
    t.scale(1.0, 1.25)


def _page(Figure, title: str, page: int):
    fig = Figure(figsize=A4)
    fig.text(0.5, 0.975, title, ha="center", va="top", fontsize=12, weight="bold")
    fig.text(0.5, 0.015, f"{DISCLAIMER}   Page {page}", ha="center", va="bottom", fontsize=6.5, color="darkred")
    return fig


def summary_page(Figure, doc: Dict, warnings: Sequence, model: Optional[Dict], page: int = 1):
    """Identification, kidneys, tumors with nephrometry, warnings, model; as one A4 page."""
    fig = _page(Figure, "Kidney and renal tumor planning report (BiSCSegmentation)", page)
    fig.text(0.5, 0.95, "NOT FOR CLINICAL USE", ha="center", va="top", fontsize=11, color="darkred", weight="bold")
    ident = doc.get("identification") or {}
    lines = [f"{k.replace('_', ' ')}: {v}" for k, v in ident.items()] or ["(no identification)"]
    lines.append(f"report made: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, BiSCSegmentation "
                 f"{doc.get('software', {}).get('version', '?')}")
    fig.text(0.06, 0.92, "Case and series\n" + "\n".join(lines[:12]), va="top", fontsize=7.5, family="monospace")

    kid_rows = [[str(n), k["side"], _fmt(k["volume_ml"]), _fmt(k["parenchyma_ml"]), _fmt(k["tumor_volume_ml"]),
                 _fmt(k["remaining_parenchyma_ml"]), str(k["tumor_count"])] for n, k in enumerate(doc["kidneys"], 1)]
    fig.text(0.06, 0.74, "Kidneys (mL)", fontsize=9, weight="bold")
    _table(fig.add_axes([0.06, 0.62, 0.88, 0.11]),
           ["#", "side", "with tumor", "parenchyma", "tumor", "remaining*", "tumors"], kid_rows)
    tum_rows = []
    for t in doc["tumors"]:
        r = t.get("renal") or {}
        tum_rows.append([str(t["index"]), str(t["side"]), _fmt(t["volume_ml"]), _fmt(t["diameter_3d_mm"]),
                         _fmt(t["diameter_axial_mm"]), str(t["size_category"])]
                        + [_fmt(r.get(k)) if r.get(k) is not None else "n/c" for k in ("R", "E", "N", "A", "L")]
                        + [_fmt(r.get("score")), str(r.get("complexity") or "n/c")])
    fig.text(0.06, 0.60, "Tumors (largest first)", fontsize=9, weight="bold")
    _table(fig.add_axes([0.06, 0.40, 0.88, 0.19]),
           ["#", "side", "mL", "3-D mm", "axial mm", "size cat.", "R", "E", "N", "A", "L", "score",
            "complexity"], tum_rows[:14], fontsize=7)
    notes = ["* parenchyma farther than 5 mm from every tumor (an excision with a 5 mm margin).",
             "Size category: AJCC cut-offs on the largest 3-D diameter (T1a <= 4 cm, T1b 4-7, T2a 7-10, T2b > 10 cm);"
             " a size category, not a stage.",
             "R.E.N.A.L. (Kutikov & Uzzo 2009) from the masks: sinus and polar lines approximated (docs/planning.md);"
             " n/c = not computed:"]
    for t in doc["tumors"][:6]:
        reasons = {k: v["reason"] for k, v in ((t.get("renal") or {}).get("raw") or {}).items()
                   if isinstance(v, dict) and "reason" in v and k != "h"}
        if reasons:
            first = next(iter(reasons.values()))
            notes.append(f"  tumor {t['index']}: {', '.join(reasons)}: {first[:110]}")
    fig.text(0.06, 0.385, "\n".join(notes), va="top", fontsize=6.5)
    warn_lines = [str(w) for w in warnings] or ["none"]
    fig.text(0.06, 0.25, "Quality warnings of this run", fontsize=9, weight="bold")
    fig.text(0.06, 0.24, "\n".join(_wrap(w, 120) for w in warn_lines[:10]), va="top", fontsize=6.5,
             color="darkred" if warnings else "black")
    fig.text(0.06, 0.12, "Model", fontsize=9, weight="bold")
    fig.text(0.06, 0.11, "\n".join(model_lines(model)), va="top", fontsize=6.5, family="monospace")
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def model_lines(model: Optional[Dict]) -> List[str]:
    """The model's name, version and file checksums (or that no network ran)."""
    if not model:
        return ["no network was run: measured from the given label map"]
    from . import __version__

    lines = [f"name: {model.get('name', '?')}   software version: {__version__}"]
    for stage in ("rough", "fine"):
        m = model.get(stage) or {}
        if m:
            lines.append(f"{stage}: sha256 {m.get('sha256') or '?'}")
    return lines


def _ct_slice(plan, k: int) -> Optional[np.ndarray]:
    return None if plan.ct_canonical is None else np.asarray(plan.ct_canonical.array[k], dtype=np.float32)


def _show(ax, background: Optional[np.ndarray], labels: np.ndarray, aspect: float, origin: str = "upper") -> None:
    """Grey CT (soft-tissue window) or a plain background, with kidney and tumor drawn over it."""
    if background is not None:
        ax.imshow(background, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], aspect=aspect, origin=origin,
                  interpolation="nearest")
    else:
        ax.imshow(np.zeros(labels.shape), cmap="gray", vmin=0, vmax=1, aspect=aspect, origin=origin)
    rgba = np.zeros(labels.shape + (4,), np.float32)
    rgba[labels == 1] = (*KIDNEY_RGB, 0.45 if background is not None else 0.9)
    rgba[labels == 2] = (*TUMOR_RGB, 0.55 if background is not None else 0.9)
    ax.imshow(rgba, aspect=aspect, origin=origin, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def tumor_axial_view(ax, plan, tumor: Dict, margin_mm: float = 40.0) -> int:
    """The axial slice through the tumor's largest axial diameter, cropped around it, with the diameter drawn
    (radiological view: patient's right on the left, anterior up). Returns the slice's canonical index."""
    ends = np.array([plan.canonical_kji(p) for p in tumor["diameter_axial_endpoints_lps"]])
    k = int(round(ends[0][0]))
    sk, sj, si = plan.canonical.spacing[::-1]
    labels = plan.canonical.array[k]
    lo = np.maximum(0, np.floor(ends[:, 1:].min(axis=0) - np.array([margin_mm / sj, margin_mm / si]))).astype(int)
    hi = np.minimum(labels.shape, np.ceil(ends[:, 1:].max(axis=0) + np.array([margin_mm / sj, margin_mm / si])) + 1
                    ).astype(int)
    crop = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
    ct = _ct_slice(plan, k)
    _show(ax, None if ct is None else ct[crop], labels[crop], aspect=sj / si)
    ax.plot(ends[:, 2] - lo[1], ends[:, 1] - lo[0], "-o", color="yellow", lw=1.5, ms=3)
    ax.set_title(f"Tumor {tumor['index']} ({tumor['side']}): axial {tumor['diameter_axial_mm']:.1f} mm, "
                 f"slice {k + 1}", fontsize=8)
    ax.text(0.02, 0.02, "R", transform=ax.transAxes, color="white", fontsize=7)
    ax.text(0.96, 0.02, "L", transform=ax.transAxes, color="white", fontsize=7)
    return k


def coronal_view(ax, plan) -> None:
    """Coronal overview: every kidney and tumor projected front to back (tumor over kidney), over the CT's
    coronal slice through the kidneys when a CT is given. Superior up, patient's right on the left."""
    a = plan.canonical.array
    projection = np.where((a == 2).any(axis=1), 2, np.where((a == 1).any(axis=1), 1, 0)).astype(np.uint8)
    sk, sj, si = plan.canonical.spacing[::-1]
    ct = None
    if plan.ct_canonical is not None:
        j = int(np.round(np.mean(np.nonzero(a.any(axis=(0, 2)))[0]))) if a.any() else a.shape[1] // 2
        ct = np.asarray(plan.ct_canonical.array[:, j, :], dtype=np.float32)
    box = [np.flatnonzero(projection.any(axis=1 - n)) for n in range(2)]
    if all(len(b) for b in box):   # crop to the kidneys with a 30 mm margin
        crop = tuple(slice(max(0, int(b[0] - 30 / s)), int(b[-1] + 30 / s) + 1) for b, s in zip(box, (sk, si)))
    else:
        crop = (slice(None), slice(None))
    _show(ax, None if ct is None else ct[crop], projection[crop], aspect=sk / si, origin="lower")
    off = [c.start or 0 for c in crop]
    for t in plan.tumors:
        kji = plan.canonical_kji(t["centroid_lps"])
        ax.text(kji[2] - off[1], kji[0] - off[0], str(t["index"]), color="black", fontsize=8, ha="center", va="center", weight="bold")
    ax.set_title("Coronal overview (projection; tumors numbered)", fontsize=8)
    ax.text(0.02, 0.02, "R", transform=ax.transAxes, color="white", fontsize=7)
    ax.text(0.96, 0.02, "L", transform=ax.transAxes, color="white", fontsize=7)


def image_pages(Figure, plan, first_page: int) -> List:
    figs = []
    fig = _page(Figure, "Key images", first_page)
    coronal_view(fig.add_axes([0.08, 0.52, 0.84, 0.40]), plan)
    slots = [[0.06, 0.07, 0.42, 0.40], [0.52, 0.07, 0.42, 0.40]]
    tumors = list(plan.tumors)
    for n, t in enumerate(tumors[:2]):
        tumor_axial_view(fig.add_axes(slots[n]), plan, t)
    figs.append(fig)
    rest = tumors[2:]
    grid = [[0.06, 0.52, 0.42, 0.40], [0.52, 0.52, 0.42, 0.40], [0.06, 0.07, 0.42, 0.40], [0.52, 0.07, 0.42, 0.40]]
    for start in range(0, len(rest), IMAGES_PER_PAGE):
        fig = _page(Figure, "Key images (continued)", first_page + len(figs))
        for n, t in enumerate(rest[start:start + IMAGES_PER_PAGE]):
            tumor_axial_view(fig.add_axes(grid[n]), plan, t)
        figs.append(fig)
    return figs


def report_figures(plan, doc: Dict, warnings: Sequence = (), model: Optional[Dict] = None) -> List:
    Figure, _ = _matplotlib()
    return [summary_page(Figure, doc, warnings, model)] + image_pages(Figure, plan, 2)


def expected_pages(plan) -> int:
    return 2 + int(math.ceil(max(0, len(plan.tumors) - 2) / IMAGES_PER_PAGE))


def write_pdf(figures: Sequence, path, title: str = "BiSCSegmentation planning report") -> None:
    _, PdfPages = _matplotlib()
    with PdfPages(str(path), metadata={"Title": title, "Subject": "Not for clinical use",
                                       "Creator": "BiSCSegmentation"}) as pdf:
        for fig in figures:
            pdf.savefig(fig)


def verify_pdf(path, pages: int) -> None:
    """Read the PDF back: with pypdf when installed (page count), else its header and trailer."""
    data = Path(path).read_bytes()
    if not data.startswith(b"%PDF-") or b"%%EOF" not in data[-1024:]:
        raise ValueError("not a complete PDF")
    try:
        from pypdf import PdfReader
    except ImportError:
        return
    got = len(PdfReader(str(path)).pages)
    if got != pages:
        raise ValueError(f"{got} pages instead of {pages}")


def add_report(outputs, path, plan, doc: Dict, warnings: Sequence = (), model: Optional[Dict] = None) -> Path:
    """Add the PDF report to a set of outputs (written with the others, or not at all)."""
    _matplotlib()   # refuse before any work when matplotlib is missing
    pages = expected_pages(plan)

    def write(tmp: Path) -> None:
        write_pdf(report_figures(plan, doc, warnings, model), tmp)

    return outputs.add(path, write, lambda tmp: verify_pdf(tmp, pages), "report")


__all__ = ["add_report", "report_figures", "write_pdf", "verify_pdf", "expected_pages", "DISCLAIMER"]
