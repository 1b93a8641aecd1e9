"""The Bokeh documents of the watch page: one run, or the runs of a directory.

Each open page is a Bokeh session with a periodic callback that asks the shared
:class:`labpgt.watch.snapshot.WatchedRun` for its snapshot and, when that changed, appends the
new rows to the page's data sources (or replaces them after a ``--resume``). Nothing on the
page sends anything back but navigation: there are no widgets that act.
"""
from __future__ import annotations

import html
import logging
import time
import urllib.parse
from dataclasses import dataclass, field

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (BoxAnnotation, ColumnDataSource, DataTable, Div, LinearColorMapper, Range1d, Span,
                          TableColumn)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from labpgt.watch.listing import PathRefused, WatchRoot
from labpgt.watch.snapshot import KNOB_MEASUREMENTS, RunSnapshot, WatchedRun

log = logging.getLogger(__name__)

#: how often a page asks for news; the shared snapshot is read at most every MIN_POLL_INTERVAL_S
PAGE_POLL_MS = 250
LISTING_POLL_MS = 2000
#: a browser redraws what it is sent, and that costs far more than the watcher's side
#: (scripts/bench_watch.py): status, step and curves at most this often ...
LIGHT_EVERY_S = 1.0
#: ... spectra, waterfall and knob clouds (the heaviest redraws) at most this often
HEAVY_EVERY_S = 3.0
STATUS_COLOURS = {"running": "#1a7f37", "completed": "#0969da", "aborted": "#bf8700", "failed": "#cf222e",
                  "killed": "#6e7781", "unknown": "#6e7781", "unreadable": "#6e7781"}
STATUS_WORDS = {"killed": "killed (not resumed)"}
_PLOT = dict(height=280, sizing_mode="stretch_width", tools="pan,wheel_zoom,box_zoom,reset,save,hover",
             toolbar_location="above")


class Hub:
    """What every session of one watcher shares: the root, and one WatchedRun per open file."""

    def __init__(self, root: WatchRoot):
        self.root = root
        self.runs: dict = {}
        self.sessions: dict = {}  # path -> open pages
        self.last_activity_s = time.monotonic()

    def open(self, path) -> WatchedRun:
        run = self.runs.get(path)
        if run is None:
            run = self.runs[path] = WatchedRun(path)
        self.sessions[path] = self.sessions.get(path, 0) + 1
        return run

    def release(self, path) -> None:
        self.sessions[path] -= 1
        self.last_activity_s = time.monotonic()
        if not self.sessions[path]:
            # nobody looks: let go of the file (it is reopened by the next page)
            del self.sessions[path]
            self.runs.pop(path).close()

    @property
    def open_pages(self) -> int:
        return sum(self.sessions.values())


def make_document(doc: Document, hub: Hub) -> None:
    """Bokeh's entry point for a new page: the run named by ``?run=`` (or the one file), or the listing."""
    arguments = doc.session_context.request.arguments if doc.session_context else {}
    name = arguments.get("run", [b""])[0].decode("utf-8", "replace")
    if hub.root.is_dir and not name:
        _listing_page(doc, hub)
        return
    try:
        path = hub.root.resolve(name or None)
    except PathRefused as exc:  # the gate refuses these first; this is the second line of defence
        doc.add_root(Div(text=f"<p>refused: {html.escape(str(exc))}</p>"))
        return
    RunPage(doc, hub, path)


# ------------------------------------------------------------------------------------------ listing
def _listing_page(doc: Document, hub: Hub) -> None:
    doc.title = f"runs in {hub.root.path.name}"
    div = Div(text="", sizing_mode="stretch_width")

    def refresh():
        runs = hub.root.runs()
        rows = "".join(
            f"<tr><td><a href='?run={urllib.parse.quote(run.name)}'>{html.escape(run.name)}</a></td>"
            f"<td>{_badge(run.status)}</td><td>{html.escape(run.detail)}</td>"
            f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(run.mtime_s))}</td></tr>"
            for run in runs)
        div.text = (f"<h2>Runs in {html.escape(str(hub.root.path))}</h2>"
                    f"<table class='runs' style='border-collapse:collapse' cellpadding='4'>"
                    f"<tr><th align=left>run file</th><th align=left>status</th><th align=left>progress</th>"
                    f"<th align=left>modified</th></tr>{rows}</table>"
                    + ("" if runs else "<p>no run files (.h5) here yet</p>"))
    refresh()
    doc.add_root(div)
    doc.add_periodic_callback(refresh, LISTING_POLL_MS)


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return (f"<span class='status' style='background:{colour};color:white;padding:2px 8px;border-radius:4px'>"
            f"{html.escape(STATUS_WORDS.get(status, status))}</span>")


def _duration(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def _when(time_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time_s))


# ------------------------------------------------------------------------------------------ one run
@dataclass
class _Shown:
    """What this page has already been sent."""

    version: int = -1
    generation: int = -1
    heavy_version: int = -1
    heavy_sent_s: float = -1e9
    light_sent_s: float = -1e9
    steps: int = 0
    evaluations: int = 0
    knob_row: int = -1
    colour_range: tuple | None = None
    extras: dict = field(default_factory=dict)


class RunPage:
    """One page of one run: header, learning curves, spectra and waterfall, knobs, faults, status log."""

    def __init__(self, doc: Document, hub: Hub, path):
        self.doc, self.hub, self.path = doc, hub, path
        self.run = hub.open(path)
        self.shown = _Shown()
        self._build()
        doc.on_session_destroyed(lambda _context: hub.release(path))
        self.update()
        doc.add_periodic_callback(self.update, PAGE_POLL_MS)

    def _build(self) -> None:
        self.header = Div(text="", sizing_mode="stretch_width")
        self.about = Div(text="", sizing_mode="stretch_width")  # changes rarely: sent only when it does
        self.steps = ColumnDataSource({k: [] for k in ("measurements", "loss", "accuracy", "time_ms", "current_a")})
        self.evals = ColumnDataSource({k: [] for k in ("measurements", "test_loss", "test_accuracy")})
        loss = figure(title="loss", x_axis_label="training measurements", **_PLOT)
        loss.line("measurements", "loss", source=self.steps, legend_label="train (batch)", color="#1f77b4")
        loss.scatter("measurements", "test_loss", source=self.evals, legend_label="test", color="#d62728", size=7)
        loss.line("measurements", "test_loss", source=self.evals, color="#d62728")
        accuracy = figure(title="accuracy", x_axis_label="training measurements", y_range=Range1d(0, 1.02), **_PLOT)
        accuracy.line("measurements", "accuracy", source=self.steps, legend_label="train (batch)", color="#1f77b4")
        accuracy.scatter("measurements", "test_accuracy", source=self.evals, legend_label="test", color="#d62728",
                         size=7)
        accuracy.line("measurements", "test_accuracy", source=self.evals, color="#d62728")
        for p in (loss, accuracy):
            p.legend.location = "top_right" if p is loss else "bottom_right"

        self.spectra = ColumnDataSource({"xs": [], "ys": [], "colour": [], "alpha": []})
        self.spectrum = figure(title="latest spectra (dBm)", x_axis_label="frequency (MHz)", **_PLOT)
        self.spectrum.multi_line("xs", "ys", source=self.spectra, color="colour", alpha="alpha")
        self.line_span = Span(location=0, dimension="height", line_color="#d62728", line_dash="dashed",
                              line_width=2, visible=False)
        self.drive_span = Span(location=0, dimension="height", line_color="#1a7f37", line_width=2, visible=False)
        self.spectrum.add_layout(self.line_span)
        self.spectrum.add_layout(self.drive_span)
        self.band_boxes: list = []
        self.legend_div = Div(text="<small><span style='color:#d62728'>- - found line</span> &nbsp; "
                                   "<span style='color:#1a7f37'>— drive</span> &nbsp; "
                                   "<span style='background:#ddd'>&nbsp;readout bands&nbsp;</span></small>")
        self.waterfall = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self.mapper = LinearColorMapper(palette=Viridis256, low=-100, high=0)
        wf = figure(title="waterfall of recent traces (dBm)", x_axis_label="frequency (MHz)",
                    y_axis_label="measurement row", **_PLOT)
        wf.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.waterfall, color_mapper=self.mapper)
        self.waterfall_fig = wf

        self.knobs = ColumnDataSource({k: [] for k in ("time_ms", "detuning_mhz", "power_dbm", "current_a")})
        detuning = figure(title="drive detuning from the line (MHz)", x_axis_type="datetime", **_PLOT)
        detuning.scatter("time_ms", "detuning_mhz", source=self.knobs, size=2, alpha=0.4)
        power = figure(title="drive power (dBm)", x_axis_type="datetime", x_range=detuning.x_range, **_PLOT)
        power.scatter("time_ms", "power_dbm", source=self.knobs, size=2, alpha=0.4, color="#ff7f0e")
        current = figure(title="bias current (A)", x_axis_type="datetime", x_range=detuning.x_range, **_PLOT)
        current.scatter("time_ms", "current_a", source=self.knobs, size=2, alpha=0.3, color="#9467bd",
                        legend_label="measured at")
        current.line("time_ms", "current_a", source=self.steps, color="black", legend_label="after each step")
        current.legend.location = "top_left"

        self.faults = ColumnDataSource({k: [] for k in ("time", "step", "role", "kind", "recovered", "attempt",
                                                        "message")})
        faults = DataTable(source=self.faults, sizing_mode="stretch_width", height=200, index_position=None,
                           columns=[TableColumn(field=k, title=k) for k in self.faults.data])
        self.log = ColumnDataSource({k: [] for k in ("time", "status", "writer", "message")})
        log_table = DataTable(source=self.log, sizing_mode="stretch_width", height=200, index_position=None,
                              columns=[TableColumn(field=k, title=k) for k in self.log.data])
        self.faults_title = Div(text="<h3>Faults and recoveries</h3>")
        back = Div(text="<a href='./'>← all runs</a>") if self.hub.root.is_dir else Div(text="")
        self.doc.add_root(column(
            back, self.header, self.about,
            row(loss, accuracy, sizing_mode="stretch_width"),
            row(column(self.spectrum, self.legend_div, sizing_mode="stretch_width"), wf,
                sizing_mode="stretch_width"),
            row(detuning, power, current, sizing_mode="stretch_width"),
            row(column(self.faults_title, faults, sizing_mode="stretch_width"),
                column(Div(text="<h3>Status log</h3>"), log_table, sizing_mode="stretch_width"),
                sizing_mode="stretch_width"),
            sizing_mode="stretch_width"))

    # -------------------------------------------------------------------------------- updates
    def update(self) -> None:
        snap = self.run.poll()
        now = time.monotonic()
        if snap.version != self.shown.version and (snap.frozen or now - self.shown.light_sent_s >= LIGHT_EVERY_S):
            self._update_light(snap)
            self.shown.light_sent_s = now
        if snap.version != self.shown.heavy_version and (snap.frozen or now - self.shown.heavy_sent_s >= HEAVY_EVERY_S):
            self.shown.heavy_version, self.shown.heavy_sent_s = snap.version, now
            if not snap.error:
                self._update_spectra(snap)
                self._update_knobs(snap)

    def _update_light(self, snap: RunSnapshot) -> None:
        """Status, step, curves and tables: little to send, little to redraw, at every change."""
        fresh = snap.generation != self.shown.generation
        if fresh:
            self.shown = _Shown(generation=snap.generation)
        self.shown.version = snap.version
        self.doc.title = f"{snap.status} · step {snap.step} · {snap.path.name}"
        self.header.text = _header_html(snap)
        about = _about_html(snap)
        if about != self.about.text:
            self.about.text = about
        if snap.error:
            return
        self._update_curves(snap, fresh)
        self._update_tables(snap)

    def _update_curves(self, snap: RunSnapshot, fresh: bool) -> None:
        s, e = snap.steps, snap.evaluations
        steps = {"measurements": s["measurements"], "loss": s["loss"], "accuracy": s["accuracy"],
                 "time_ms": s["time_s"] * 1e3, "current_a": s["current_a"]}
        evals = {"measurements": e["measurements"], "test_loss": e["test_loss"],
                 "test_accuracy": e["test_accuracy"]}
        if fresh:
            self.steps.data, self.evals.data = steps, evals
        else:
            self.steps.stream({k: v[self.shown.steps:] for k, v in steps.items()})
            self.evals.stream({k: v[self.shown.evaluations:] for k, v in evals.items()})
        self.shown.steps, self.shown.evaluations = len(s["step"]), len(e["step"])

    def _update_spectra(self, snap: RunSnapshot) -> None:
        if not len(snap.spectrum_hz):
            return
        mhz = snap.spectrum_hz / 1e6
        k = len(snap.spectra_dbm)
        self.spectra.data = {"xs": [mhz] * k, "ys": list(snap.spectra_dbm),
                             "colour": ["#9aa5b1"] * (k - 1) + ["#1f77b4"], "alpha": [0.6] * (k - 1) + [1.0]}
        if snap.line_hz is not None:
            self.line_span.location, self.line_span.visible = snap.line_hz / 1e6, True
        if snap.drive_hz is not None:
            self.drive_span.location, self.drive_span.visible = snap.drive_hz / 1e6, True
        if not self.band_boxes and snap.bands_hz:
            for i, (low, high) in enumerate(snap.bands_hz):
                box = BoxAnnotation(left=low / 1e6, right=high / 1e6, fill_color="#888888",
                                    fill_alpha=0.12 if i % 2 == 0 else 0.04, line_alpha=0)
                self.band_boxes.append(box)
                self.spectrum.add_layout(box)
        wf = np.asarray(snap.waterfall_dbm, dtype=np.float32)
        if wf.size:
            if self.shown.colour_range is None:
                low, high = (float(v) for v in np.percentile(wf, [1, 99.9]))
                self.shown.colour_range = (low, high)
                self.mapper.low, self.mapper.high = low, high
            first_row = snap.rows - len(wf)
            self.waterfall.data = {"image": [wf], "x": [mhz[0]], "y": [first_row], "dw": [mhz[-1] - mhz[0]],
                                   "dh": [max(1, len(wf))]}

    def _update_knobs(self, snap: RunSnapshot) -> None:
        kn = snap.knobs
        if not kn:
            return
        fresh = self.shown.knob_row < 0  # a new page, or the first after a resume
        new = kn["row"] > self.shown.knob_row
        data = {"time_ms": kn["time_s"][new] * 1e3, "detuning_mhz": kn["detuning_hz"][new] / 1e6,
                "power_dbm": kn["power_dbm"][new], "current_a": kn["current_a"][new]}
        if fresh:
            self.knobs.data = data
        elif new.any():
            self.knobs.stream(data, rollover=KNOB_MEASUREMENTS)
        if len(kn["row"]):
            self.shown.knob_row = int(kn["row"][-1])

    def _update_tables(self, snap: RunSnapshot) -> None:
        counts = (len(snap.faults), len(snap.status_log))
        if self.shown.extras.get("table_rows") == counts:
            return  # both tables only ever grow: the same counts, the same rows (the browser redraws less)
        self.shown.extras["table_rows"] = counts
        f = snap.faults
        self.faults.data = {"time": [_when(x["time_s"]) for x in f], "step": [x["step"] for x in f],
                            "role": [x["role"] for x in f], "kind": [x["kind"] for x in f],
                            "recovered": ["yes" if x["recovered"] else "NO" for x in f],
                            "attempt": [x["attempt"] for x in f], "message": [x["message"] for x in f]}
        unrecovered = sum(not x["recovered"] for x in f)
        self.faults_title.text = (f"<h3>Faults and recoveries: {len(f)}"
                                  + (f", <span style='color:#cf222e'>{unrecovered} not recovered</span>"
                                     if unrecovered else "") + "</h3>")
        log_rows = snap.status_log
        self.log.data = {"time": [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x["time_s"])) for x in log_rows],
                         "status": [x["status"] for x in log_rows],
                         "writer": [f"pid {x['pid']} on {x['host']}" for x in log_rows],
                         "message": [x["message"] for x in log_rows]}


def _header_html(snap: RunSnapshot) -> str:
    e = html.escape
    if snap.error:
        return f"<h2>{e(snap.path.name)}</h2><p>{_badge('unreadable')} {e(snap.error)}</p>"
    budget = snap.budget or 0
    share = min(1.0, snap.measurements / budget) if budget else 0.0
    bar = (f"<div style='background:#eee;width:320px;height:10px;display:inline-block;vertical-align:middle'>"
           f"<div style='background:{STATUS_COLOURS.get(snap.status, '#888')};width:{share * 100:.1f}%;"
           f"height:10px'></div></div>")
    rate = f"{snap.rate_per_s:.1f} measurements/s" if snap.rate_per_s else "–"
    frozen = "" if snap.status == "running" else " <small>(frozen: the file no longer changes)</small>"
    return (
        f"<h2 style='margin:4px 0'>{e(snap.path.name)} {_badge(snap.status)}{frozen}</h2>"
        f"<div class='summary' style='font-size:15px'>"
        f"step <b id='step'>{snap.step}</b> &nbsp;·&nbsp; measurements <b>{snap.measurements}</b> / {budget} "
        f"{bar} {share * 100:.1f}% &nbsp;·&nbsp; rate {rate} &nbsp;·&nbsp; ETA {_duration(snap.eta_s)}"
        f" &nbsp;·&nbsp; {snap.rows} rows recorded</div>")


def _about_html(snap: RunSnapshot) -> str:
    """The run's identity: writer, station, seed and options (not redrawn with every step)."""
    e = html.escape
    if snap.error:
        return ""
    identities = "".join(f"<tr><td>{e(role)}</td><td><code>{e(str(idn))}</code></td></tr>"
                         for role, idn in sorted(snap.identities.items()))
    options = ", ".join(f"{e(str(k))}={e(str(v))}" for k, v in snap.options.items())
    return (
        f"<div style='font-size:13px;color:#444'>{e(snap.status_message)} ({e(snap.writer)}) &nbsp;·&nbsp; "
        f"created {e(snap.created_utc)} &nbsp;·&nbsp; seed {e(str(snap.seed))} &nbsp;·&nbsp; "
        f"labpgt {e(snap.package_version)}</div>"
        f"<details open><summary>station and options</summary><table style='font-size:13px'>{identities}</table>"
        f"<p style='font-size:13px'>{options}</p><p style='font-size:12px'><code>{e(snap.command_line)}</code></p>"
        f"</details>")
