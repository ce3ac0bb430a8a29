"""The Slicer module's planning table shows the size category and R.E.N.A.L. parts, and each tumor's largest
axial diameter is drawn as a line markup on its slice (on slicer-core's real MRML)."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import case_files, ct_node, ctx, needs_slicer_core  # noqa: F401 - fixtures

pytestmark = [needs_slicer_core, pytest.mark.slicer]


def _labels(shape):
    """A box kidney with a cube tumor on its face (no sinus: N and L are not computed)."""
    labels = np.zeros(shape, np.uint8)
    labels[8:32, 25:65, 15:45] = 1
    labels[14:22, 30:40, 40:50] = 2
    return labels


def test_table_shows_nephrometry_and_line_follows_the_tumor(ctx, ct_node):
    from BiSCSegmentationLib.planning import analyse
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer import planning
    from BiSCSegmentationSlicer.logic import BiSCLogic
    from BiSCSegmentationSlicer.scene import volume_from_node

    logic = BiSCLogic(ctx)
    ct = volume_from_node(ct_node)
    labels = _labels(ct.array.shape)
    roi = KidneyROI(tuple(ct.index_to_physical(np.array([30.0, 45.0, 20.0]))), (400.0, 400.0, 400.0), "right")
    seg = logic.apply_labels(ct_node, labels, [roi])
    table = planning.update_table(ctx, seg, ct_node)
    cells = planning.table_rows(table)
    header, rows = cells[0], {r[0]: dict(zip(cells[0], r)) for r in cells[1:]}
    assert header == list(planning.COLUMNS)
    (tumor,) = [r for n, r in rows.items() if n.endswith("renal tumor")]
    (core,) = analyse(ct.with_array(labels)).tumors            # what the core says for the same label map
    assert tumor["Axial diameter (mm)"] == f"{core['diameter_axial_mm']:.1f}"
    assert tumor["Size category"] == core["size_category"]
    assert [tumor[k] for k in "RENAL"] == [str(core["renal"][k]) if core["renal"][k] is not None else "n/c"
                                          for k in "RENAL"]
    assert tumor["N"] == "n/c" and tumor["R.E.N.A.L. score"] == "n/c"   # a box kidney has no sinus
    (kidney,) = [r for n, r in rows.items() if n.endswith("kidney")]
    assert kidney["R"] == "" and kidney["Size category"] == ""
    # the line markup: on the tumor's axial diameter, RAS control points
    (line,) = planning.diameter_lines(ctx, seg).values()
    ras = np.array([line.GetNthControlPointPosition(i) for i in range(line.GetNumberOfControlPoints())])
    lps = ras * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(lps, core["diameter_axial_endpoints_lps"], atol=0.01)
    assert np.linalg.norm(lps[0] - lps[1]) == pytest.approx(core["diameter_axial_mm"], abs=0.06)
    assert f"{core['diameter_axial_mm']:.1f} mm" in line.GetName()
    # the tumor removed: its line goes with it
    seg2 = logic.apply_labels(ct_node, np.where(labels == 2, 1, labels).astype(np.uint8), [roi])
    planning.update_table(ctx, seg2, ct_node)
    assert not planning.diameter_lines(ctx, seg2)
