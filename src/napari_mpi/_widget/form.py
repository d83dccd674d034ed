"""The widget's form: every control declared once, with magicgui's widgets and containers.

The form holds no behaviour of its own beyond showing, hiding and locking its controls: the dock widget
(:mod:`.widget`) connects to their ``changed`` signals. Choices that follow the viewer (the image layers, the
chosen layer's axes) are callables over lists the form keeps, so that magicgui's ``reset_choices`` (when the
form is docked or undocked) redraws the same choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    Widget,
)
from qtpy.QtWidgets import QComboBox, QSizePolicy

from .texts import ADVANCED_TIP, TIPS

__all__ = ["AUTO_THREADS", "CUSTOM", "SCOPES", "DenoiseForm", "quietly"]

#: The preset label shown when beta and iterations match no preset.
CUSTOM = "Custom"
#: Steps of the progress bar.
PROGRESS_STEPS = 1000
#: What the CPU threads field shows at 0: torch's own choice.
AUTO_THREADS = "auto"


def _float_box(name: str, low: float, high: float, step: float, decimals: int, value: float) -> FloatSpinBox:
    box = FloatSpinBox(name=name, tooltip=TIPS[name])
    box.native.setDecimals(decimals)  # before the range, which the spin box rounds to its decimals
    box.min, box.max, box.step, box.value = low, high, step, value
    return box


def _wrapping(label: Label) -> Label:
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    return label


def _holding(container: Container, widgets: list[Widget], margins: tuple[int, ...] = (0, 0, 0, 0)) -> Container:
    container.extend(widgets)
    container.margins = margins
    return container


#: The choices of the Layers field: (label, which layers Denoise processes)
SCOPES = (
    ("The chosen image", "chosen"),
    ("Selected image layers", "selected"),
    ("All image layers", "all"),
)

#: The choices of the stacks field: (label, ``reuse_network`` value)
REUSE_CHOICES = (
    ("Reuse the network where planes look alike", "auto"),
    ("Reuse the network on every plane", True),
    ("Denoise every plane alone", False),
)


def _row(text: str, *fields: Widget, **options: Any) -> Container:
    """A labelled row of a column: ``Label(text)``, then the fields (the label takes the first field's tooltip)."""
    label = Label(value=text, tooltip=fields[0].tooltip)
    return _holding(Container(layout="horizontal", labels=False, **options), [label, *fields])


def _align(column: Container) -> None:
    """Give the labels of a column's rows one width, that of the widest as the font it is drawn in renders it
    (magicgui's own labels are measured in the application's font, which napari's theme enlarges)."""
    labels = [row[0] for row in column if isinstance(row, Container)]
    for label in labels:
        label.native.ensurePolished()
    width = max(label.native.sizeHint().width() for label in labels)
    for label in labels:
        label.min_width = width


def quietly(*widgets: Widget) -> ExitStack:
    """A context in which changing these widgets' values emits no ``changed`` signal."""
    stack = ExitStack()
    for widget in widgets:
        stack.enter_context(widget.changed.blocked())
    return stack


class DenoiseForm:
    """The controls of the dock widget; ``container`` holds them all (its ``native`` is what napari docks).

    ``presets``: the engine's preset names (shown capitalised, then Custom); ``devices``: the device choices;
    ``mask_ratio`` and ``lr``: the initial values of those fields; ``max_threads``: the CPU threads one may ask
    for (the number of cores).

    ``parameters`` lists every control that changes what a run does, and ``actions`` the buttons that change
    them or start something: :meth:`lock` disables both while a run goes on, and ``greyed`` (controls
    that a choice such as the Auto preset switches off) stay disabled after it.
    """

    def __init__(self, *, presets: Sequence[str], devices: Sequence[str], mask_ratio: float, lr: float,
                 max_threads: int = 1) -> None:
        self._choices: dict[str, list[tuple[str, Any]]] = {"layer": [], "channel_axis": [("none", None)]}
        self.running = False
        self.greyed: set[str] = set()
        self._declare_main(presets, mask_ratio)
        self._declare_advanced(devices, lr, max_threads)
        self._declare_run()
        self.parameters = [
            self.layer, self.scope, self.preset, self.mask_ratio, self.beta, self.iterations, self.lr, self.seed,
            self.device, self.threads, self.channel_axis, self.refine, self.crop, self.reuse,
        ]
        self.actions = [self.use_hint, self.reset_button, self.preview_button]
        self.container = _holding(Container(name="mpi_denoise", labels=False), [
            self.main, self.advanced_toggle, self.advanced, _row("Stacks", self.reuse), self.follow,
            _holding(Container(name="buttons", layout="horizontal", labels=False),
                     [self.run_button, self.preview_button]),
            self.progress_bar, self.status,
        ])

    def _declare_main(self, presets: Sequence[str], mask_ratio: float) -> None:
        self.layer = ComboBox(name="layer", tooltip=TIPS["layer"],
                              choices=lambda _: self._choices["layer"])
        self.layer.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.layer.native.setMinimumContentsLength(12)  # long layer names do not widen the dock
        self.scope = ComboBox(name="scope", choices=list(SCOPES), value="chosen", tooltip=TIPS["scope"])
        self.preset = ComboBox(name="preset", tooltip=TIPS["preset"],
                               choices=[name.capitalize() for name in presets] + [CUSTOM])
        self.mask_ratio = _float_box("mask_ratio", 0.05, 0.95, 0.05, 2, mask_ratio)
        # shown when the chosen layer's noise looks spatially correlated: a hint, one click to take
        self.noise_hint = _wrapping(Label(name="noise_hint", tooltip=TIPS["noise_hint"]))
        self.use_hint = PushButton(name="use_hint", text="Use", tooltip=TIPS["noise_hint"])
        self.hint_box = _row("", self.noise_hint, self.use_hint, name="hint_box", visible=False)
        self.beta = _float_box("beta", 0.0, 0.999, 0.01, 3, 0.9)
        self.iterations = SpinBox(name="iterations", min=1, max=100_000, step=50, tooltip=TIPS["iterations"])
        self.main = _holding(Container(name="main", labels=False), [
            _row("Image", self.layer), _row("Layers", self.scope), _row("Preset", self.preset),
            _row("Mask ratio", self.mask_ratio), self.hint_box, _row("Beta", self.beta),
            _row("Iterations", self.iterations),
        ])

    def _declare_advanced(self, devices: Sequence[str], lr: float, max_threads: int) -> None:
        self.advanced_toggle = CheckBox(name="advanced_toggle", text="Advanced", value=False, tooltip=ADVANCED_TIP)
        self.lr = _float_box("lr", 0.00001, 0.1, 0.0005, 5, lr)
        self.seed = SpinBox(name="seed", min=0, max=2**31 - 1, value=0, tooltip=TIPS["seed"])
        self.device = ComboBox(name="device", choices=list(devices), tooltip=TIPS["device"])
        self.threads = ComboBox(name="threads", value=0, tooltip=TIPS["threads"],  # 0: leave torch's own choice
                                choices=[(AUTO_THREADS, 0)] + [(str(n), n) for n in range(1, max(1, max_threads) + 1)])
        self.channel_axis = ComboBox(name="channel_axis", tooltip=TIPS["channel_axis"],
                                     choices=lambda _: self._choices["channel_axis"])
        self.refine = CheckBox(name="refine", text="Wiener refinement after the fill (mask ratio up to 0.65)",
                               value=True, tooltip=TIPS["refine"])
        self.crop = CheckBox(name="crop", text="Train on 256x256 windows of big gray planes (CPU, faster)",
                             value=True, tooltip=TIPS["crop"])
        self.reset_button = PushButton(name="reset_button", text="Reset to defaults", tooltip=TIPS["reset"])
        self.advanced = _holding(Container(name="advanced", labels=False, visible=False), [
            _row("Learning rate", self.lr), _row("Seed", self.seed), _row("Device", self.device),
            _row("CPU threads", self.threads), _row("Channel axis", self.channel_axis), self.refine, self.crop,
            self.reset_button,
        ], margins=(12, 0, 0, 0))
        self.advanced_toggle.changed.connect(self._show_advanced)

    def _declare_run(self) -> None:
        self.reuse = ComboBox(name="reuse", choices=list(REUSE_CHOICES), value="auto", tooltip=TIPS["reuse"])
        self.follow = CheckBox(name="follow", text="Show the plane being denoised", value=True,
                               tooltip=TIPS["follow"])
        self.run_button = PushButton(name="run_button", text="Denoise", tooltip=TIPS["run"])
        self.preview_button = PushButton(name="preview_button", text="Preview on the view", tooltip=TIPS["preview"])
        self.progress_bar = ProgressBar(name="progress_bar", min=0, max=PROGRESS_STEPS, value=0, readout=False,
                                        visible=False)
        self.status = _wrapping(Label(name="status", value=""))

    # -- behaviour of the form itself ----------------------------------------------------
    def _show_advanced(self, shown: bool) -> None:
        self.advanced.visible = shown

    def align_labels(self) -> None:
        """Line up the fields of the main and the advanced column (once napari's theme styles the form)."""
        _align(self.main)
        _align(self.advanced)

    def set_choices(self, combo: ComboBox, items: list[tuple[str, Any]], value: Any) -> None:
        """Show ``items`` ((text, data) pairs, in this order) in ``combo`` and choose ``value`` (the first item when
        it is not among them), without a ``changed`` signal."""
        self._choices[combo.name][:] = items
        with quietly(combo):
            combo.choices = ()  # start empty so that the new order holds
            combo.reset_choices()
            if items:
                combo.value = value if any(data is value or data == value for _, data in items) else items[0][1]

    def grey_out(self, names: set[str]) -> None:
        """Disable the controls named in ``names`` (e.g. beta for the Auto preset) and enable the others,
        unless a run goes on: then every parameter stays locked."""
        self.greyed = set(names)
        self._apply_lock()

    def _apply_lock(self) -> None:
        for widget in self.parameters + self.actions:
            widget.enabled = not self.running and widget.name not in self.greyed

    def lock(self, running: bool) -> None:
        """Lock the parameters while a run goes on; the run button turns into Cancel. The bar starts from 0 when
        the form locks, not again for each layer of a queue."""
        starting = running and not self.running
        self.running = running
        self._apply_lock()
        self.run_button.text = "Cancel" if running else "Denoise"
        self.progress_bar.visible = running
        if starting:
            self.progress_bar.value = 0

    def show_progress(self, text: str, fraction: float) -> None:
        self.status.value = text
        self.progress_bar.value = int(round(PROGRESS_STEPS * fraction))
