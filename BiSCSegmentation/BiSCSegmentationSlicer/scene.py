"""The scene and its volumes: module logics, volume node <-> Volume with geometry, files, subject hierarchy.

Geometry conventions. A volume node stores spacing, origin and axis directions in RAS; the cascade's
:class:`~BiSCSegmentationLib.volume.Volume` is LPS (ITK's, what SimpleITK reads from the same file). The
conversion only negates the first two rows, so ``volume_from_node(load_volume(path))`` and
``read_volume(path)`` describe the same voxels at the same places (up to the last bit of the header's
floating-point numbers), whatever the header's orientation.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import slicer
import vtk
from BiSCSegmentationLib.errors import InputError

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


class SceneError(InputError, RuntimeError):
    """The scene or a node cannot be used as asked; the message says what to do."""


class SceneContext:
    """A MRML scene plus the application logic on which the module logics are registered.

    Inside Slicer: ``SceneContext(slicer.mrmlScene, slicer.app.applicationLogic())``.
    Outside (slicer-core): :func:`make_scene`.
    """

    def __init__(self, scene, app_logic=None):
        self.scene = scene
        self.app_logic = app_logic

    def module_logic(self, name: str):
        logic = self.app_logic.GetModuleLogic(name) if self.app_logic is not None else None
        if logic is None and hasattr(slicer, "app"):    # inside Slicer, should the app logic not list it
            try:
                logic = slicer.util.getModuleLogic(name)
            except Exception:  # noqa: BLE001 - no such module
                logic = None
        if logic is None:
            raise SceneError(f"the {name} module logic is not registered on the application logic")
        return logic

    @property
    def segmentations(self):
        return self.module_logic("Segmentations")

    @property
    def subject_hierarchy(self):
        return self.scene.GetSubjectHierarchyNode()

    def node(self, node_id: Optional[str]):
        return self.scene.GetNodeByID(node_id) if node_id else None

    def nodes_by_class(self, class_name: str):
        nodes = self.scene.GetNodesByClass(class_name)
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]

    def remove(self, node) -> None:
        if node is not None and self.scene.IsNodePresent(node):
            self.scene.RemoveNode(node)


def make_scene() -> SceneContext:
    """A new scene with the module logics registered on an application logic (what Slicer does at startup)."""
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)
    logics = [("Volumes", slicer.vtkSlicerVolumesLogic()),
              ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()),
              ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic()),
              ("Markups", slicer.vtkSlicerMarkupsLogic())]
    for name, logic in logics:
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, logic)
    ctx = SceneContext(scene, app)
    ctx._keep = [colors] + [logic for _, logic in logics]  # the application logic holds no Python references
    return ctx


# ---------------------------------------------------------------------------------------------- geometry
def ijk_to_lps(node) -> np.ndarray:
    """4x4 matrix mapping (i, j, k, 1) of ``node`` to LPS millimetres."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    out = ras.copy()
    out[:2, :] *= -1.0
    return out


def check_untransformed(node, what: str = "volume") -> None:
    """The module works in the node's own coordinates: refuse a node under a transform (harden it first)."""
    if node.GetParentTransformNode() is not None:
        raise SceneError(f"{node.GetName()} is under a transform; harden the transform (Data module, right-click "
                         f"the {what} > Harden transform) before using it here")


def volume_from_node(node, copy: bool = True):
    """The volume node's voxels and geometry as a LPS :class:`Volume` (array indexed [k, j, i])."""
    from BiSCSegmentationLib.volume import Volume

    if node is None or node.GetImageData() is None:
        raise SceneError("select a CT volume that holds image data")
    check_untransformed(node)
    image = node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise SceneError(f"{node.GetName()} is a multi-component (e.g. RGB) image; select a grey-level CT volume")
    array = slicer.util.arrayFromVolume(node)
    if array.ndim != 3:
        raise SceneError(f"{node.GetName()} is not a 3D volume")
    dirs = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(dirs)
    direction = LPS_FROM_RAS @ np.array([[dirs.GetElement(r, c) for c in range(3)] for r in range(3)])
    ox, oy, oz = node.GetOrigin()
    return Volume(np.array(array, copy=True) if copy else array, tuple(node.GetSpacing()), (-ox, -oy, oz),
                  direction)


def set_node_geometry(node, volume) -> None:
    """Give ``node`` the spacing, origin and directions of a LPS Volume."""
    ras_dirs = LPS_FROM_RAS @ np.asarray(volume.direction)
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(ras_dirs[r, c]))
    node.SetIJKToRASDirectionMatrix(m)
    node.SetSpacing(*volume.spacing)
    x, y, z = volume.origin
    node.SetOrigin(-x, -y, z)


def add_volume_node(ctx: SceneContext, volume, name: str, labelmap: bool = False):
    """A new scalar (or label map) volume node holding ``volume``'s voxels and geometry."""
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = ctx.scene.AddNewNodeByClass(cls, name)
    set_node_geometry(node, volume)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.CreateDefaultDisplayNodes()
    return node


# ------------------------------------------------------------------------------------------------- files
def read_node(ctx: SceneContext, node_class: str, storage_class: str, path, what: str, name=None):
    """A new node of ``node_class`` read from ``path`` by a ``storage_class`` storage node; nothing is
    left in the scene when the file cannot be read."""
    node = ctx.scene.AddNewNodeByClass(node_class, name) if name else ctx.scene.AddNewNodeByClass(node_class)
    storage = ctx.scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        ctx.remove(storage)
        ctx.remove(node)
        raise SceneError(f"{path}: cannot read this {what}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def load_volume(ctx: SceneContext, path, name: Optional[str] = None, labelmap: bool = False):
    """Read an image file (NRRD, NIfTI, MHA...) into a new volume node, with a display node."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SceneError(f"{path}: no such file")
    name = name or _base_name(path)
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = read_node(ctx, cls, "vtkMRMLVolumeArchetypeStorageNode", path, "image", name)
    display = node.GetDisplayNode()
    if display is not None and not labelmap:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(400.0, 40.0)  # abdomen soft tissue
    return node


def save_node(ctx: SceneContext, node, path) -> str:
    """Write a storable node (volume, segmentation, table, markups) with its default storage node."""
    path = os.fspath(path)
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.CreateDefaultStorageNode()
        if storage is None:
            raise SceneError(f"{node.GetName()} cannot be saved to a file")
        ctx.scene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(path)
    if not storage.WriteData(node):
        raise SceneError(f"{path}: could not write {node.GetName()}")
    return path


def _base_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


# -------------------------------------------------------------------------------------- subject hierarchy
def place_beside(ctx: SceneContext, node, reference) -> None:
    """Put ``node`` in the subject hierarchy folder (e.g. the study) that holds ``reference``."""
    sh = ctx.subject_hierarchy
    if sh is None or node is None or reference is None:
        return
    parent = sh.GetItemParent(sh_item(ctx, reference))
    item = sh.GetItemByDataNode(node)
    if not item:
        sh.CreateItem(parent, node)
    elif sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)


def sh_item(ctx: SceneContext, node) -> int:
    """The node's subject hierarchy item, created under the scene when missing (Slicer's Qt plugins create
    items for new data nodes; without the application nothing does)."""
    sh = ctx.subject_hierarchy
    item = sh.GetItemByDataNode(node)
    return item if item else sh.CreateItem(sh.GetSceneItemID(), node)


def study_of(ctx: SceneContext, node) -> int:
    """Subject hierarchy item ID of the folder holding ``node`` (0 when none)."""
    sh = ctx.subject_hierarchy
    item = sh.GetItemByDataNode(node) if sh is not None and node is not None else 0
    return sh.GetItemParent(item) if item else 0


def unique_name(ctx: SceneContext, base: str) -> str:
    return ctx.scene.GenerateUniqueName(base) if ctx.scene.GetFirstNodeByName(base) is not None else base
