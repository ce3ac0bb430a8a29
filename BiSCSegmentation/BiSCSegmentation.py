"""BiSCSegmentation: kidney and renal tumor segmentation in CT (BiSC-UNet cascade) for 3D Slicer.

This file stays thin: the module description, the widget wiring, a logic facade and the self-test. The MRML
work lives in BiSCSegmentationSlicer (tested on PyPI's slicer-core), the computation in BiSCSegmentationLib.
Importing this module needs neither torch nor scipy: they are installed on first use, after a confirmation.
"""
import enum
import logging
import os
import tempfile
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from BiSCSegmentationLib.inference_settings import ROI_GROWTH_ON, InferenceSettings
from BiSCSegmentationSlicer import (about, dependencies, export, models, planning, rois, sampledata, segmentation,
                                    settings)
from BiSCSegmentationSlicer.logic import BiSCLogic, Options, WorkflowError
from BiSCSegmentationSlicer.scene import SceneContext


class BiSCSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BiSC Kidney Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BiSCSegmentation contributors"]
        self.parent.helpText = about.help_text()
        self.parent.acknowledgementText = about.acknowledgement_text()
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Sample Data > BiSCSegmentation > BiSCPhantomCT (made by the bundled phantom generator on first use)."""
    import SampleData

    moduleDir = os.path.dirname(os.path.abspath(__file__))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        **sampledata.source_arguments(moduleDir, loadPhantomSample))


def loadPhantomSample(source=None):
    """Make (first time) and load the phantom CT; the generator needs SciPy, installed after one question."""
    if dependencies.missing_pip() and not dependencies.ensure(
            lambda msg: slicer.util.confirmOkCancelDisplay(msg, "Install packages")):
        return None
    cache = slicer.app.cachePath if hasattr(slicer.app, "cachePath") else None
    try:
        with slicer.util.tryWithErrorDisplay("Could not make the phantom CT.", waitCursor=True):
            path = sampledata.make_sample_files(sampledata.cache_folder(cache))
            node = slicer.util.loadVolume(path, {"name": sampledata.NODE_NAME})
            node.GetDisplayNode().SetAutoWindowLevel(False)
            node.GetDisplayNode().SetWindowLevel(400.0, 40.0)
            return node
    except Exception:  # noqa: BLE001 - already shown by tryWithErrorDisplay
        return None


class ModelSource(enum.Enum):
    BUNDLED = "bundled"
    FILES = "files"
    URL = "url"

    def label(self):
        return {"bundled": "Bundled model", "files": "Model files", "url": "Download from URL"}[self.value]


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self):
        return self.value


class Backend(enum.Enum):
    AUTO = "auto"
    TORCH = "torch"
    OPENVINO = "openvino"

    def label(self):
        return self.value


@parameterNodeWrapper
class BiSCSegmentationParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modelSource: ModelSource = ModelSource.BUNDLED
    bundledModel: str = ""
    roughModelPath: str = ""
    fineModelPath: str = ""
    roughModelUrl: str = ""
    roughModelSha256: str = ""
    fineModelUrl: str = ""
    fineModelSha256: str = ""
    device: Device = Device.AUTO
    backend: Backend = Backend.AUTO
    mirror: bool = False
    keepSmallTumors: bool = False
    growRois: bool = False
    plainTumorBorders: bool = False
    minKidneyMl: Annotated[float, WithinRange(0.0, 200.0)] = 10.0
    minLesionMl: Annotated[float, WithinRange(0.0, 100.0)] = 0.5
    outputSegmentation: vtkMRMLSegmentationNode
    planningTable: vtkMRMLTableNode


def options_from(p: BiSCSegmentationParameterNode) -> Options:
    choice = models.ModelChoice(kind=p.modelSource.value, name=p.bundledModel, rough_path=p.roughModelPath,
                                fine_path=p.fineModelPath, rough_url=p.roughModelUrl.strip(),
                                rough_sha256=p.roughModelSha256.strip(), fine_url=p.fineModelUrl.strip(),
                                fine_sha256=p.fineModelSha256.strip())
    settings = InferenceSettings(
        device=p.device.value,
        backend=p.backend.value,
        mirror=bool(p.mirror),
        min_component_ml=float(p.minKidneyMl),
        keep_small_tumors=bool(p.keepSmallTumors),
        roi_growth=ROI_GROWTH_ON if p.growRois else 0,
        plain_tumor_borders=bool(p.plainTumorBorders),
    )
    return Options(model=choice, settings=settings)


# parameter node fields remembered across restarts (BiSCSegmentationSlicer.settings; tested against DEFAULTS)
REMEMBERED = ("modelSource", "bundledModel", "roughModelPath", "fineModelPath", "roughModelUrl", "roughModelSha256",
              "fineModelUrl", "fineModelSha256", "device", "backend", "mirror", "keepSmallTumors", "growRois",
              "plainTumorBorders", "minKidneyMl", "minLesionMl")
ENUMS = {"modelSource": ModelSource, "device": Device, "backend": Backend}
SETTINGS_APPLIED = "BiSCSegmentation.SettingsApplied"


def applySettings(p, values):
    """Put remembered (or default) settings into the parameter node."""
    for name in REMEMBERED:
        value = values[name]
        setattr(p, name, ENUMS[name](value) if name in ENUMS else value)


def currentSettings(p):
    return {name: getattr(p, name) for name in REMEMBERED}


class BiSCSegmentationLogic(ScriptedLoadableModuleLogic):
    """Facade over BiSCSegmentationSlicer.logic.BiSCLogic bound to Slicer's scene."""

    def __init__(self, runner: str = "process"):
        ScriptedLoadableModuleLogic.__init__(self)
        self.workflow = BiSCLogic(SceneContext(slicer.mrmlScene, slicer.app.applicationLogic()), runner)

    def getParameterNode(self):
        return BiSCSegmentationParameterNode(super().getParameterNode())


class BiSCSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    MODEL_ROWS = {"bundled": ("bundledModel",), "files": ("roughModelPath", "fineModelPath"),
                  "url": ("roughModelUrl", "roughModelSha256", "fineModelUrl", "fineModelSha256")}

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiObserver = None
        self._run = None
        self._roiWatcher = None
        self._planningFlush = None
        self._settingsStore = None

    # ------------------------------------------------------------------------------------------- setup
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BiSCSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BiSCSegmentationLogic()
        self._settingsStore = qt.QSettings()
        self.ui.roiTableWidget.setHorizontalHeaderLabels(["ROI", "Size", "Check"])
        for name, entry in sorted(models.bundled_models().items()):
            self.ui.bundledModelComboBox.addItem(entry.get("title", name) if isinstance(entry, dict) else name, name)
            self.ui.bundledModelComboBox.setItemData(self.ui.bundledModelComboBox.count - 1,
                                                     about.model_sentence(name), qt.Qt.ToolTipRole)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.bundledModelComboBox.connect("currentIndexChanged(int)", self.onBundledModelChanged)
        self.ui.roughModelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathsChanged)
        self.ui.fineModelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathsChanged)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.reinstallDependenciesButton.connect("clicked(bool)", self.onReinstallDependencies)
        self.ui.resetSettingsButton.connect("clicked(bool)", self.onResetSettings)
        self.ui.locateButton.connect("clicked(bool)", self.onLocate)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.addRoiButton.connect("clicked(bool)", self.onAddRoi)
        self.ui.deleteRoiButton.connect("clicked(bool)", self.onDeleteRoi)
        self.ui.roiTableWidget.connect("itemSelectionChanged()", self.updateButtons)
        self.ui.roiTableWidget.connect("cellDoubleClicked(int,int)", self.onRoiDoubleClicked)
        self.ui.editSegmentsButton.connect("clicked(bool)", self.onEditSegments)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsv)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReport)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(200)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.roiTimer = qt.QTimer()          # the ROI list: refreshed once after a burst of ROI changes
        self.roiTimer.setSingleShot(True)
        self.roiTimer.setInterval(150)
        self.roiTimer.connect("timeout()", self.refreshRois)
        self.planningTimer = qt.QTimer()     # the planning table: DEBOUNCE_MS after the last edit
        self.planningTimer.setSingleShot(True)
        self.planningTimer.setInterval(planning.DEBOUNCE_MS)
        self.planningTimer.connect("timeout()", self.onPlanningTimer)
        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)
        self.initializeParameterNode()

    def cleanup(self):
        """Module reload or application exit: a running computation is cancelled (its process tree ends)."""
        self._stopRun("")
        for timer in (self.pollTimer, self.roiTimer, self.planningTimer):
            timer.stop()
        if self._roiWatcher is not None:
            self._roiWatcher.close()
            self._roiWatcher = None
        self.logic.workflow.close()
        self.removeObservers()

    def onAboutToQuit(self):
        self._stopRun("")

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode and self._guiObserver is not None:
            self._parameterNode.disconnectGui(self._guiObserver)
            self._guiObserver = None
        self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        # the logic cancels the run itself (it observes the scene); the panel forgets it without a dialog
        self._stopRun("The scene was closed; the running computation was cancelled.")
        if self._roiWatcher is not None:
            self._roiWatcher.close()
            self._roiWatcher = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.parameterNode.GetAttribute(SETTINGS_APPLIED):   # a new scene: the remembered settings
            try:
                applySettings(p, settings.load(self._settingsStore))
            except Exception as exc:  # noqa: BLE001 - unreadable settings never block the module
                logging.warning(f"BiSCSegmentation: settings not applied: {exc}")
            # saving starts only now: a half-applied set would overwrite the remembered values
            p.parameterNode.SetAttribute(SETTINGS_APPLIED, "1")
        if not p.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                p.inputVolume = first
        if not p.bundledModel:
            p.bundledModel = models.default_bundled()

    def setParameterNode(self, node):
        if self._parameterNode:
            if self._guiObserver is not None:
                self._parameterNode.disconnectGui(self._guiObserver)
                self._guiObserver = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if self._parameterNode:
            self._guiObserver = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    # ----------------------------------------------------------------------------------------- GUI state
    def updateGUIFromParameterNode(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        source = p.modelSource.value
        for kind, names in self.MODEL_ROWS.items():
            for name in names:
                getattr(self.ui, name + "Label").setVisible(kind == source)
                self._modelWidget(name).setVisible(kind == source)
        self.ui.bundledModelComboBox.blockSignals(True)
        self.ui.bundledModelComboBox.setCurrentIndex(self.ui.bundledModelComboBox.findData(p.bundledModel))
        self.ui.bundledModelComboBox.blockSignals(False)
        for widget, value in ((self.ui.roughModelPathLineEdit, p.roughModelPath),
                              (self.ui.fineModelPathLineEdit, p.fineModelPath)):
            if widget.currentPath != value:
                widget.blockSignals(True)
                widget.currentPath = value
                widget.blockSignals(False)
        if self.logic.workflow.min_lesion_ml != p.minLesionMl:
            self.logic.workflow.min_lesion_ml = p.minLesionMl
            self.onOutputChanged(p.outputSegmentation)
        if p.parameterNode.GetAttribute(SETTINGS_APPLIED):
            settings.save(self._settingsStore, currentSettings(p))
        missing = dependencies.missing_summary()
        self.ui.dependenciesLabel.text = f"Not installed yet: {missing}." if missing else ""
        self.ui.dependenciesLabel.setVisible(bool(missing))
        self.ui.installDependenciesButton.setVisible(bool(missing))
        self.watchRois()
        self.refreshRois()
        self.updateButtons()

    def _modelWidget(self, name):
        suffix = "ComboBox" if name == "bundledModel" else "LineEdit"
        return getattr(self.ui, name + suffix)

    def onBundledModelChanged(self, index):
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.bundledModel = self.ui.bundledModelComboBox.itemData(index)

    def onModelPathsChanged(self, path=None):
        if self._parameterNode is not None:
            self._parameterNode.roughModelPath = self.ui.roughModelPathLineEdit.currentPath
            self._parameterNode.fineModelPath = self.ui.fineModelPathLineEdit.currentPath

    def onResetSettings(self, checked=False):
        applySettings(self._parameterNode, settings.reset(self._settingsStore))
        if not self._parameterNode.bundledModel:
            self._parameterNode.bundledModel = models.default_bundled()
        self.ui.statusLabel.text = "Settings reset to their defaults."

    def updateButtons(self):
        p = self._parameterNode
        busy = self._run is not None
        volume = p.inputVolume if p else None
        output = p.outputSegmentation if p else None
        self.ui.locateButton.enabled = bool(volume) and not busy
        self.ui.addRoiButton.enabled = bool(volume) and not busy
        self.ui.segmentButton.enabled = bool(volume) and not busy and self.ui.roiTableWidget.rowCount > 0
        self.ui.deleteRoiButton.enabled = not busy and bool(self.ui.roiTableWidget.selectedItems())
        self.ui.cancelButton.enabled = busy
        self.ui.editSegmentsButton.enabled = bool(output) and not busy
        self.ui.reinstallDependenciesButton.enabled = not busy
        self.ui.show3DButton.enabled = bool(output)
        shown = bool(output) and segmentation.is_shown_3d(output)
        if self.ui.show3DButton.checked != shown:       # the toggle follows the display node
            self.ui.show3DButton.blockSignals(True)
            self.ui.show3DButton.checked = shown
            self.ui.show3DButton.blockSignals(False)
        self.ui.exportCsvButton.enabled = bool(output) and bool(volume)
        self.ui.exportReportButton.enabled = bool(output) and bool(volume) and not busy
        self.ui.exportDicomSegButton.enabled = bool(output) and bool(volume) and not busy

    # ------------------------------------------------------------------------------------------- ROIs
    def watchRois(self):
        """The ROI list follows every change of the input's ROI nodes (move, resize, rename, delete, add)."""
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        if self._roiWatcher is not None and self._roiWatcher.volume_node is volume:
            return
        if self._roiWatcher is not None:
            self._roiWatcher.close()
            self._roiWatcher = None
        if volume is not None:
            self._roiWatcher = self.logic.workflow.watch_rois(volume, self.roiTimer.start)

    def refreshRois(self):
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        table = self.ui.roiTableWidget
        rows, messages = [], []
        if volume is not None and slicer.mrmlScene.IsNodePresent(volume):
            try:
                rows = self.logic.workflow.roi_rows(volume) if not dependencies.missing_pip() else []
            except (WorkflowError, ValueError) as exc:
                messages.append(str(exc))
        selected = self._selectedRoiNode()
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            check = "OK" if row.ok and not row.warnings else ("Problem" if not row.ok else "Warning")
            for c, text in enumerate((row.name, row.size_text, check)):
                item = qt.QTableWidgetItem(text)
                item.setData(qt.Qt.UserRole, row.node_id)
                table.setItem(r, c, item)
            if selected is not None and row.node_id == selected.GetID():
                table.selectRow(r)
            messages += row.problems + row.warnings
        self.ui.roiProblemsLabel.text = "\n".join(messages)
        self.updateButtons()

    def _selectedRoiNode(self):
        items = self.ui.roiTableWidget.selectedItems()
        return slicer.mrmlScene.GetNodeByID(items[0].data(qt.Qt.UserRole)) if items else None

    def onAddRoi(self):
        try:
            self._requireDependencies()
            self.logic.workflow.add_roi(self._parameterNode.inputVolume)
        except Exception as exc:  # noqa: BLE001 - shown to the user in plain words
            slicer.util.errorDisplay(f"Could not add the ROI: {exc}")
        self.refreshRois()

    def onDeleteRoi(self):
        node = self._selectedRoiNode()
        if node is not None:
            self.logic.workflow.delete_roi(node)
            self.refreshRois()

    def onRoiDoubleClicked(self, row, column):
        node = self._selectedRoiNode()
        if node is not None:
            center = node.GetCenter()
            slicer.modules.markups.logic().JumpSlicesToLocation(center[0], center[1], center[2], True)

    # ------------------------------------------------------------------------------------ running stages
    def _requireDependencies(self):
        if dependencies.missing_summary() and not self.onInstallDependencies():
            raise WorkflowError("BiSCSegmentation cannot run before its Python packages are installed.")

    def onInstallDependencies(self, checked=False, reinstall=False):
        """One question, then each install step in a progress dialog (PyTorch, then the pinned packages)."""
        dialog = None

        def progress(text, step, steps):
            nonlocal dialog
            if dialog is None:
                dialog = slicer.util.createProgressDialog(windowTitle="Installing Python packages",
                                                          labelText=text, maximum=max(steps, 1))
            dialog.labelText = text
            dialog.value = step
            slicer.app.processEvents()
        try:
            with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
                ok = dependencies.ensure(lambda msg: slicer.util.confirmOkCancelDisplay(msg, "Install packages"),
                                         progress=progress, reinstall=reinstall)
        except Exception:  # noqa: BLE001 - already shown by tryWithErrorDisplay
            ok = False
        finally:
            if dialog is not None:
                dialog.close()
        if ok and reinstall:
            slicer.util.infoDisplay("The packages were reinstalled. Restart Slicer before the next run.")
        self.updateGUIFromParameterNode()
        return ok

    def onReinstallDependencies(self, checked=False):
        self.onInstallDependencies(reinstall=True)

    def onLocate(self):
        volume = self._parameterNode.inputVolume
        edited = self.logic.workflow.edited_rois(volume) if volume is not None else []
        mode = "keep"
        if edited:
            mode = self._askRoiMode(edited)
            if mode is None:
                return
        self._start(lambda: self.logic.workflow.start_locate(volume, options_from(self._parameterNode), mode))

    def _askRoiMode(self, edited):
        """Replace / keep mine (the default) / cancel, for ROIs the person edited."""
        error = rois.ROIsEdited(edited)
        box = qt.QMessageBox(qt.QMessageBox.Question, "Your kidney ROIs", str(error))
        keep = box.addButton("Keep mine", qt.QMessageBox.AcceptRole)
        replace = box.addButton("Replace", qt.QMessageBox.DestructiveRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(keep)
        box.exec_()
        return {keep: "keep", replace: "replace"}.get(box.clickedButton())

    def onSegment(self):
        self._start(lambda: self.logic.workflow.start_segment(self._parameterNode.inputVolume,
                                                              options_from(self._parameterNode)))

    def _start(self, starter):
        try:
            self._requireDependencies()
            self._run = starter()
        except WorkflowError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting..."
        self._showWarnings([])
        self.pollTimer.start()
        self.updateButtons()

    def _stopRun(self, message):
        """Cancel the running computation (its whole process tree) and forget it; nothing is added."""
        run, self._run = self._run, None
        if run is None:
            return []
        self.pollTimer.stop()
        survivors = self.logic.workflow.cancel(run)
        if message:
            self.ui.statusLabel.text = message
        self.ui.progressBar.value = 0
        self.updateButtons()
        return survivors

    def onCancel(self):
        survivors = self._stopRun("Cancelled. Nothing was changed.")
        if survivors:
            slicer.util.warningDisplay(f"Processes {survivors} of the computation could not be stopped; end them "
                                       f"in the system's task manager.")

    def onPoll(self):
        run = self._run
        if run is None:
            self.pollTimer.stop()
            return
        status = run.job.poll()
        self.ui.progressBar.value = int(round(100 * status.fraction))
        self.ui.statusLabel.text = f"{status.text}: {100 * status.fraction:.0f}%"
        if not status.finished:
            return
        self.pollTimer.stop()
        self._run = None
        if status.details:
            logging.info(status.details)
        self._showWarnings(status.warnings)
        try:
            if run.task == "locate":
                self.logic.workflow.finish_locate(run, status)
                self.ui.statusLabel.text = ("Kidneys located" + status.ran_on
                                            + ": check each ROI, then press \"Segment kidneys\".")
            else:
                self._finishSegment(run, status)
        except WorkflowError as exc:
            self.ui.statusLabel.text = str(exc)
            if status.state != "cancelled":
                slicer.util.errorDisplay(str(exc))
        except Exception as exc:  # noqa: BLE001 - an unexpected failure still leaves the panel usable
            logging.exception("BiSCSegmentation")
            self.ui.statusLabel.text = f"Failed: {exc}"
            slicer.util.errorDisplay(f"Could not show the result: {exc}. Details are in the Python console.")
        if status.notes:
            self.ui.statusLabel.text += "\n" + "\n".join(status.notes)
        self.refreshRois()

    def _showWarnings(self, warnings):
        """Quality warnings in a red box under the status line; critical ones also in a dialog, so that an
        implausible result is never taken on trust."""
        from BiSCSegmentationLib.quality import CRITICAL

        from BiSCSegmentationSlicer.logic import warnings_text

        text = warnings_text(warnings)
        self.ui.qualityLabel.text = text
        self.ui.qualityLabel.visible = bool(text)
        for w in warnings:
            logging.warning(f"BiSCSegmentation: {w}")
        if any(w.severity == CRITICAL for w in warnings):
            slicer.util.warningDisplay(text, windowTitle="BiSCSegmentation: implausible result")

    def _finishSegment(self, run, status):
        try:
            node = self.logic.workflow.finish_segment(run, status, mode="ask")
        except segmentation.OutputEdited as exc:
            box = qt.QMessageBox(qt.QMessageBox.Question, "Segmentation was edited", str(exc))
            replace = box.addButton("Replace", qt.QMessageBox.DestructiveRole)
            new = box.addButton("Keep it, write a new one", qt.QMessageBox.AcceptRole)
            box.addButton(qt.QMessageBox.Cancel)
            box.setDefaultButton(new)
            box.exec_()
            if box.clickedButton() not in (replace, new):
                self.ui.statusLabel.text = "Not written; your edited segmentation is unchanged."
                return
            node = self.logic.workflow.finish_segment(run, status, mode="replace" if box.clickedButton() == replace
                                                      else "new")
        self._parameterNode.outputSegmentation = node
        used = (status.result or {}).get("rois", run.rois)
        grown = sum(a != b for a, b in zip(run.rois, used))
        self.ui.statusLabel.text = (f"Wrote \"{node.GetName()}\"{status.ran_on} with the "
                                    f"{options_from(self._parameterNode).model.describe()}. "
                                    + (f"{grown} ROI(s) grown: the kidney reached the box's face. " if grown else "")
                                    + "Edit it in Segment Editor; the table follows.")

    # ------------------------------------------------------------------------------------------ results
    def onOutputChanged(self, node):
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        if node is None or volume is None:
            self.ui.planningTableView.setMRMLTableNode(None)
            self.updateButtons()
            return

        def schedule(flush):      # every edit restarts the timer: one update DEBOUNCE_MS after the last edit
            self._planningFlush = flush
            self.planningTimer.start()
        self.logic.workflow.observe(node, volume, schedule=schedule, on_update=self._showTable)
        try:
            self._showTable(self.logic.workflow.planning_table(node, volume))   # computed only when stale
        except Exception as exc:  # a foreign segmentation on another grid, missing scipy, ...
            logging.warning(f"BiSCSegmentation: no planning table for {node.GetName()}: {exc}")
        self.updateButtons()

    def onPlanningTimer(self):
        flush, self._planningFlush = self._planningFlush, None
        if flush is not None:
            try:
                flush()
            except Exception as exc:  # noqa: BLE001 - an edit never ends in an exception dialog
                logging.warning(f"BiSCSegmentation: planning table not updated: {exc}")

    def _showTable(self, table):
        self._parameterNode.planningTable = table
        self.ui.planningTableView.setMRMLTableNode(table)

    def onEditSegments(self):
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.outputSegmentation)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(p.inputVolume)
        else:
            editor.setMasterVolumeNode(p.inputVolume)

    def onShow3D(self, checked=True):
        """A toggle: surfaces on, and off again."""
        node = self._parameterNode.outputSegmentation if self._parameterNode else None
        if node is None:
            return
        shown = segmentation.toggle_3d(node, checked)
        layout = slicer.app.layoutManager()
        if shown and layout is not None and layout.threeDViewCount:
            layout.threeDWidget(0).threeDView().resetFocalPoint()
        self.updateButtons()

    def onExportCsv(self):
        p = self._parameterNode
        folder = settings.load(self._settingsStore)["lastOutputFolder"]
        start = os.path.join(folder, f"{p.outputSegmentation.GetName()}.csv") if folder and os.path.isdir(folder) \
            else f"{p.outputSegmentation.GetName()}.csv"
        path = qt.QFileDialog.getSaveFileName(None, "Export planning table", start, "CSV files (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not write the CSV file.", waitCursor=True):
                self.logic.workflow.export_csv(p.outputSegmentation, p.inputVolume, path)
                settings.save(self._settingsStore, {"lastOutputFolder": os.path.dirname(os.path.abspath(path))})


    def _exportTarget(self, title, suffix, fileFilter):
        """(path, overwrite) from a save dialog, or (None, False). Qt's dialog asks before an existing file is
        chosen; a name it did not see (the suffix added here) is only replaced after asking."""
        p = self._parameterNode
        folder = settings.load(self._settingsStore)["lastOutputFolder"]
        name = f"{p.outputSegmentation.GetName()}{suffix}"
        start = os.path.join(folder, name) if folder and os.path.isdir(folder) else name
        path = qt.QFileDialog.getSaveFileName(None, title, start, fileFilter)
        if not path:
            return None, False
        if path.lower().endswith(suffix):
            return path, True
        path += suffix
        if os.path.exists(path) and not slicer.util.confirmOkCancelDisplay(f"{path} exists. Replace it?", title):
            return None, False
        return path, True

    def _ensureExportPackages(self, feature):
        """The packages an export needs (matplotlib for the report, highdicom for DICOM SEG), after asking."""
        missing = dependencies.missing_optional(feature)
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                f"This export needs the Python package(s) {', '.join(missing)}. Install them now?", "Install packages"):
            return False
        with slicer.util.tryWithErrorDisplay("Could not install the packages.", waitCursor=True):
            for spec in missing:
                slicer.util.pip_install(spec)
        return not dependencies.missing_optional(feature)

    def _export(self, what, call, path):
        """Run one export with a wait cursor; success and failure in a message box."""
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            call()
        except WorkflowError as exc:
            qt.QApplication.restoreOverrideCursor()
            slicer.util.errorDisplay(f"The {what} was not written. {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user, details in the console
            qt.QApplication.restoreOverrideCursor()
            logging.exception("BiSCSegmentation: %s export failed", what)
            slicer.util.errorDisplay(f"Could not write the {what}: {exc}. Details are in the Python console.")
            return
        qt.QApplication.restoreOverrideCursor()
        settings.save(self._settingsStore, {"lastOutputFolder": os.path.dirname(os.path.abspath(path))})
        slicer.util.infoDisplay(f"The {what} was saved to {path}.")

    def onExportReport(self):
        p = self._parameterNode
        if not p.outputSegmentation or not p.inputVolume or not self._ensureExportPackages("report"):
            return
        path, overwrite = self._exportTarget("Export planning report", ".pdf", "PDF files (*.pdf)")
        if path:
            self._export("report", lambda: self.logic.workflow.export_report(
                p.outputSegmentation, p.inputVolume, path, overwrite=overwrite), path)

    def onExportDicomSeg(self):
        p = self._parameterNode
        if not p.outputSegmentation or not p.inputVolume or not self._ensureExportPackages("dicom"):
            return
        dicomFolder = None
        if not self.logic.workflow.dicom_files(p.inputVolume):     # not from the DICOM database: ask for the folder
            if not slicer.util.confirmOkCancelDisplay(f"{export.NOT_FROM_DICOM}\n\nChoose the DICOM folder of "
                                                      f"{p.inputVolume.GetName()} now?", "Export DICOM SEG"):
                return
            dicomFolder = qt.QFileDialog.getExistingDirectory(None, "DICOM folder of the CT")
            if not dicomFolder:
                return
        path, overwrite = self._exportTarget("Export DICOM SEG", ".dcm", "DICOM files (*.dcm)")
        if path:
            self._export("DICOM SEG", lambda: self.logic.workflow.export_dicom_seg(
                p.outputSegmentation, p.inputVolume, path, dicom_folder=dicomFolder, overwrite=overwrite), path)


class BiSCSegmentationTest(ScriptedLoadableModuleTest):
    """The slicer-core workflow test (Testing/test_slicer_workflow.py), inside Slicer, on a phantom sample."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_workflow()

    def test_workflow(self):
        if dependencies.missing_summary():
            self.delayDisplay(f"Skipped: install the dependencies first ({dependencies.missing_summary()})")
            return
        from BiSCSegmentationSlicer import selftest

        self.delayDisplay("Building a phantom CT and tiny random-weight models")
        folder = tempfile.mkdtemp(prefix="bisc-selftest-")
        case = selftest.make_case_files(folder)
        volume = slicer.util.loadVolume(case["ct"])
        logic = BiSCSegmentationLogic()
        report = selftest.run_workflow(logic.workflow, volume, case, self.assertTrue, self.delayDisplay)
        slicer.util.selectModule("BiSCSegmentation")
        widget = slicer.modules.biscsegmentation.widgetRepresentation().self()
        store = qt.QSettings()
        remembered = settings.load(store)         # the panel remembers what the test sets: restored below
        try:
            self._panel(widget, volume, case, logic, report, store)
        finally:
            settings.reset(store)
            settings.save(store, remembered)

    def _panel(self, widget, volume, case, logic, report, store):
        from BiSCSegmentationSlicer import proctree

        self.delayDisplay("Module panel: Locate kidneys through the widget, polled by its timer")
        p = widget._parameterNode
        for node in rois.roi_nodes(logic.workflow.ctx, volume):   # edited ROIs would make Locate ask first
            slicer.mrmlScene.RemoveNode(node)
        p.inputVolume = volume
        p.modelSource = ModelSource.FILES
        p.roughModelPath, p.fineModelPath = case["rough"], case["fine"]
        p.device = Device.CPU
        widget.onLocate()
        self.assertTrue(widget._run is not None and widget.ui.cancelButton.enabled)
        deadline = time.time() + 300
        while widget._run is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertTrue(widget._run is None, "the widget's run did not finish")
        self.assertTrue(widget.ui.roiTableWidget.rowCount == len(logic.workflow.rois(volume)))

        self.delayDisplay("Cancel ends the PythonSlicer launcher and the Python it started within 2 s")
        widget.onLocate()
        job = widget._run.job
        deadline = time.time() + 60
        while job.proc.poll() is None and not proctree.descendants(job.proc.pid) and time.time() < deadline:
            time.sleep(0.02)
        pids = [job.proc.pid] + proctree.descendants(job.proc.pid)
        t0 = time.time()
        widget.onCancel()
        self.assertTrue(widget._run is None and time.time() - t0 < 2.5, "Cancel took too long")
        self.assertTrue(not any(proctree.alive(pid) for pid in pids), f"worker processes left: {pids}")
        self.assertTrue(not os.path.exists(job.dir), "the job folder was left behind")

        self.delayDisplay("Settings are remembered; Reset to defaults forgets them")
        p.mirror = True
        self.assertTrue(settings.load(store)["mirror"] is True and settings.load(store)["device"] == "cpu")
        widget.onResetSettings()
        self.assertTrue(p.mirror is False and p.device == Device.AUTO and p.modelSource == ModelSource.BUNDLED)
        self.assertTrue(settings.load(store)["mirror"] is False)

        self.delayDisplay("Show 3D is a toggle")
        p.outputSegmentation = report["output"]
        self.assertTrue(widget.ui.exportCsvButton.enabled and widget.ui.editSegmentsButton.enabled)
        self.assertTrue(widget.ui.exportReportButton.enabled and widget.ui.exportDicomSegButton.enabled)
        widget.ui.show3DButton.checked = True
        self.assertTrue(report["output"].GetDisplayNode().GetVisibility3D())
        widget.ui.show3DButton.checked = False
        self.assertTrue(not report["output"].GetDisplayNode().GetVisibility3D(), "Show 3D did not hide again")

        self.delayDisplay("Sample Data: the phantom CT")
        sample = loadPhantomSample()
        self.assertTrue(sample is not None and sample.GetName() == sampledata.NODE_NAME)
        self.delayDisplay("Test passed")
