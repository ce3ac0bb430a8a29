"""Screenshots for docs/slicer.md, drawn offscreen with VTK from a module scene (run from the repository root):

    .venv/bin/python docs/tools/slicer_screenshots.py Resources/Screenshots

builds the phantom scene the module works on (the slicer-core test's phantom, at a finer grid), runs the
module's logic on it and renders what the Slicer views show after each step: slices in radiological
convention (patient's right on the left) with the rough preview, the kidney ROIs and the segments, and a 3D
view of the surfaces. The repository ships no trained weights, so the rough mask and the labels passed to the
logic are derived from the phantom's ground truth (``--model ROUGH FINE`` runs real model files instead).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
# the module's MRML layer is not installed with the package: import it from the source tree, as Slicer does
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "BiSCSegmentation"))

PANEL = 420          # pixels per slice panel
STEP_MM = 1.0        # sampling of the slice images


# ----------------------------------------------------------------------------------------------- slices
def _ras_to_ijk(node) -> np.ndarray:
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _sample(node, points_ras: np.ndarray, order: int) -> np.ndarray:
    """Values of a volume node at RAS points (N, 3): linear (order 1) or nearest (order 0); outside -> min."""
    import slicer
    from scipy import ndimage

    arr = slicer.util.arrayFromVolume(node)
    ijk = np.c_[points_ras, np.ones(len(points_ras))] @ _ras_to_ijk(node).T
    kji = ijk[:, 2::-1].T
    fill = float(arr.min())
    return ndimage.map_coordinates(arr.astype(np.float32), kji, order=order, mode="constant", cval=fill)


def plane_points(bounds: np.ndarray, view: str, position: float) -> Tuple[np.ndarray, Tuple[int, int]]:
    """RAS sample points of an axial ("z") or coronal ("y") slice, radiological orientation, row-major."""
    (x0, x1), (y0, y1), (z0, z1) = bounds
    xs = np.arange(x1, x0, -STEP_MM)                       # screen left = patient right (+x RAS)
    if view == "axial":
        ys = np.arange(y1, y0, -STEP_MM)                   # screen top = anterior
        gx, gy = np.meshgrid(xs, ys)
        pts = np.c_[gx.ravel(), gy.ravel(), np.full(gx.size, position)]
    else:
        zs = np.arange(z1, z0, -STEP_MM)                   # screen top = superior
        gx, gz = np.meshgrid(xs, zs)
        pts = np.c_[gx.ravel(), np.full(gx.size, position), gz.ravel()]
    return pts, gx.shape


def volume_bounds(node) -> np.ndarray:
    b = [0.0] * 6
    node.GetRASBounds(b)
    return np.array(b).reshape(3, 2)


def slice_rgb(ctx, ct_node, view: str, position: float, seg_nodes: Sequence = ()) -> Tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3) of a CT slice (window 400 / level 40) with segments blended in; and the sample points."""
    bounds = volume_bounds(ct_node)
    pts, shape = plane_points(bounds, view, position)
    ct = _sample(ct_node, pts, 1).reshape(shape)
    grey = np.clip((ct - (40 - 200)) / 400.0, 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for seg_node, opacity in seg_nodes:
        seg = seg_node.GetSegmentation()
        for n in range(seg.GetNumberOfSegments()):
            segment = seg.GetNthSegment(n)
            label = _segment_label_node(ctx, seg_node, seg.GetNthSegmentID(n), ct_node)
            mask = _sample(label, pts, 0).reshape(shape) > 0
            ctx.remove(label)
            color = np.array(segment.GetColor())
            rgb[mask] = (1 - opacity) * rgb[mask] + opacity * color
            edge = mask & ~_erode(mask)
            rgb[edge] = color
    return rgb, pts.reshape(shape + (3,))


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _segment_label_node(ctx, seg_node, segment_id: str, reference):
    import vtk
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    label = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ctx.segmentations.ExportSegmentsToLabelmapNode(seg_node, ids, label, reference)
    return label


def draw_boxes(rgb: np.ndarray, pts: np.ndarray, view: str, boxes: Sequence[Tuple[str, np.ndarray, tuple]]):
    """Outline the ROI boxes (RAS bounds) where they cut the slice; returns [(name, (col, row), color)]."""
    labels = []
    xs = pts[0, :, 0]
    vs = pts[:, 0, 1] if view == "axial" else pts[:, 0, 2]
    position = pts[0, 0, 2] if view == "axial" else pts[0, 0, 1]
    for name, b, color in boxes:
        cut = (b[2] if view == "axial" else b[1])
        if not cut[0] <= position <= cut[1]:
            continue
        v = b[1] if view == "axial" else b[2]
        cols = np.flatnonzero((xs >= b[0][0]) & (xs <= b[0][1]))
        rows = np.flatnonzero((vs >= v[0]) & (vs <= v[1]))
        if not cols.size or not rows.size:
            continue
        c0, c1, r0, r1 = cols[0], cols[-1], rows[0], rows[-1]
        for t in range(2):
            rgb[r0:r1 + 1, [min(c0 + t, c1), max(c1 - t, c0)]] = color
            rgb[[min(r0 + t, r1), max(r1 - t, r0)], c0:c1 + 1] = color
        labels.append((name, (c0 + 4, r0 + 4), color))
    return labels


# ----------------------------------------------------------------------------------------------- render
def _image_actor(rgb: np.ndarray):
    import vtk
    from vtk.util import numpy_support

    h, w, _ = rgb.shape
    data = (np.clip(rgb[::-1], 0, 1) * 255).astype(np.uint8).reshape(-1, 3)   # VTK rows go bottom-up
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(data, deep=True))
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputData(image)
    return actor, (w, h)


def _text(text: str, x: float, y: float, size: int = 15, color=(1, 1, 1), bold=False, viewport_coords=False,
          mono=False):
    import vtk
    actor = vtk.vtkTextActor()
    actor.SetInput(text)
    p = actor.GetTextProperty()
    p.SetFontSize(size)
    p.SetColor(*color)
    p.SetBold(bold)
    p.SetFontFamilyToCourier() if mono else p.SetFontFamilyToArial()
    if viewport_coords:
        actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    actor.SetPosition(x, y)
    return actor


def render_panels(panels: List[Dict], path: str, footer: Sequence[str] = (), footer_px: int = 0) -> str:
    """Render slice panels side by side (each {"rgb", "title", "labels"}) and write a PNG."""
    import vtk

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    width = PANEL * len(panels)
    height = PANEL + footer_px
    window.SetSize(width, height)
    for n, panel in enumerate(panels):
        ren = vtk.vtkRenderer()
        ren.SetViewport(n / len(panels), footer_px / height, (n + 1) / len(panels), 1.0)
        ren.SetBackground(0.05, 0.05, 0.07)
        actor, (w, h) = _image_actor(panel["rgb"])
        ren.AddActor(actor)
        ren.AddViewProp(_text(panel["title"], 0.02, 0.94, 16, bold=True, viewport_coords=True))
        for name, (col, row), color in panel.get("labels", []):
            t = _text(name, col, h - row - 16, 13, color)
            t.GetPositionCoordinate().SetCoordinateSystemToWorld()
            t.SetPosition(col, h - row - 16)
            ren.AddViewProp(t)
        cam = ren.GetActiveCamera()
        cam.ParallelProjectionOn()
        cam.SetFocalPoint(w / 2, h / 2, 0)
        cam.SetPosition(w / 2, h / 2, 1000)
        cam.SetParallelScale(max(h, w * PANEL / (PANEL + 1e-9)) / 2 * 1.02)
        window.AddRenderer(ren)
    if footer_px:
        ren = vtk.vtkRenderer()
        ren.SetViewport(0, 0, 1, footer_px / height)
        ren.SetBackground(0.12, 0.13, 0.16)
        for i, line in enumerate(footer):
            ren.AddViewProp(_text(line, 12, footer_px - 24 - 19 * i, 14, (0.95, 0.95, 0.95), mono=True))
        window.AddRenderer(ren)
    window.Render()
    return _write(window, path)


def _write(window, path: str) -> str:
    import vtk
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(path)
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    return path


def render_3d(seg_node, roi_boxes, path: str, size=(840, 520)) -> str:
    """Closed surfaces of the segments and the ROI boxes, seen from the front (patient's right on the left)."""
    import slicer
    import vtk

    seg_node.CreateClosedSurfaceRepresentation()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    ren = vtk.vtkRenderer()
    ren.SetBackground(0.76, 0.78, 0.9)
    ren.SetBackground2(0.3, 0.32, 0.48)
    ren.GradientBackgroundOn()
    name = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    seg = seg_node.GetSegmentation()
    for n in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(n)
        poly = segment.GetRepresentation(name)
        if poly is None or poly.GetNumberOfPoints() == 0:
            continue
        mapper = vtk.vtkPolyDataMapper()
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(poly)
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segment.GetColor())
        actor.GetProperty().SetSpecular(0.2)
        ren.AddActor(actor)
    for label, b, color in roi_boxes:
        outline = vtk.vtkOutlineSource()
        outline.SetBounds(*np.asarray(b).ravel())
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(outline.GetOutputPort())
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        actor.GetProperty().SetLineWidth(2)
        ren.AddActor(actor)
    ren.ResetCamera()
    cam = ren.GetActiveCamera()
    fp = np.array(cam.GetFocalPoint())
    cam.SetPosition(*(fp + np.array([0.0, 600.0, 0.0])))   # from anterior
    cam.SetViewUp(0, 0, 1)
    ren.ResetCamera()
    cam.Zoom(1.3)
    ren.AddViewProp(_text("3D view: Show 3D (anterior, patient's right on the left)", 0.02, 0.94, 16, bold=True,
                         viewport_coords=True))
    window.AddRenderer(ren)
    window.Render()
    return _write(window, path)


# ------------------------------------------------------------------------------------------------ scene
def roi_boxes_ras(ctx, volume_node):
    from BiSCSegmentationSlicer import rois
    out = []
    for node in rois.roi_nodes(ctx, volume_node):
        b = [0.0] * 6
        node.GetRASBounds(b)
        side = node.GetAttribute(rois.SIDE_ATTRIBUTE) or "unknown"
        out.append((node.GetName(), np.array(b).reshape(3, 2), rois.SIDE_COLORS.get(side, (1, 1, 0))))
    return out


def make_screenshots(out_dir: str, models: Optional[Tuple[str, str]] = None, seed: int = 3) -> List[str]:
    from BiSCSegmentationLib.phantom import procedural_labels, synthesize_ct
    from BiSCSegmentationLib.roi import rois_from_mask
    from BiSCSegmentationLib.volume import write_volume
    from scipy import ndimage

    from BiSCSegmentationSlicer import planning, segmentation as segs
    from BiSCSegmentationSlicer.logic import BiSCLogic, Options
    from BiSCSegmentationSlicer.models import ModelChoice
    from BiSCSegmentationSlicer.scene import load_volume, make_scene, volume_from_node
    from BiSCSegmentationSlicer.selftest import oblique

    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bisc-shots-")
    labels = oblique(procedural_labels(seed, spacing=(1.5, 1.5, 3.0), kidneys="both"), degrees=6.0)
    ct_path = os.path.join(work, "phantom-ct.nrrd")
    write_volume(synthesize_ct(labels, seed), ct_path, force=True)
    ctx = make_scene()
    node = load_volume(ctx, ct_path, name="Phantom CT")
    logic = BiSCLogic(ctx, runner="thread")
    ct = volume_from_node(node)
    if models:
        options = Options(model=ModelChoice(kind="files", rough_path=models[0], fine_path=models[1]))
        logic.locate(node, options)
    else:   # stand-in for the rough stage: a coarse, slightly grown version of the true kidneys
        rough = ndimage.binary_dilation(labels.array > 0, iterations=2)
        logic.apply_rough(node, rough.astype(np.uint8), rois_from_mask(labels, (1.5, 1.5, 3.0)))
    boxes = roi_boxes_ras(ctx, node)
    kid_z = float(np.mean([b[1][2].mean() for b in boxes]))
    kid_y = float(np.mean([b[1][1].mean() for b in boxes]))
    preview = segs.find_preview(ctx, node)
    written = []
    panels = []
    for view, pos, title in (("axial", kid_z, "Axial"), ("coronal", kid_y, "Coronal")):
        rgb, pts = slice_rgb(ctx, node, view, pos, seg_nodes=[(preview, 0.35)])
        labels_txt = draw_boxes(rgb, pts, view, boxes)
        panels.append({"rgb": rgb, "title": f"{title}: kidney ROIs + rough preview", "labels": labels_txt})
    rows = [f"{r.name}: {r.size_text}  {'OK' if r.ok else '; '.join(r.problems)}" for r in logic.roi_rows(node)]
    written.append(render_panels(panels, os.path.join(out_dir, "1-locate.png"), ["Kidney ROIs (Locate kidneys)"] + rows,
                                 footer_px=30 + 19 * len(rows)))
    if models:
        seg = logic.segment(node, options)
    else:
        seg = logic.apply_labels(node, labels.array, logic.rois(node), ct=ct)
    preview.GetDisplayNode().SetVisibility(False)
    tumor = np.argwhere(labels.array == 2)
    if tumor.size:   # cut through the tumor
        lps = labels.index_to_physical(tumor[:, ::-1].mean(axis=0))
        kid_z, kid_y = float(lps[2]), float(-lps[1])
    panels = []
    for view, pos, title in (("axial", kid_z, "Axial"), ("coronal", kid_y, "Coronal")):
        rgb, pts = slice_rgb(ctx, node, view, pos, seg_nodes=[(seg, 0.5)])
        panels.append({"rgb": rgb, "title": f"{title}: \"{seg.GetName()}\"", "labels": []})
    table = planning.compute_rows(ctx, seg, node)
    widths = (22, 6, 12, 22, 26)
    lines = ["Planning table (Results and planning)"]
    lines += ["".join(c.ljust(w) for c, w in zip(planning.COLUMNS, widths))]
    lines += ["".join(c.ljust(w) for c, w in zip(r.cells(), widths)) for r in table]
    written.append(render_panels(panels, os.path.join(out_dir, "2-segment.png"), lines, footer_px=30 + 19 * len(lines)))
    written.append(render_3d(seg, boxes, os.path.join(out_dir, "3-3d.png")))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--model", nargs=2, metavar=("ROUGH", "FINE"), help="run these model files instead")
    args = p.parse_args(argv)
    for path in make_screenshots(args.out_dir, tuple(args.model) if args.model else None):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
