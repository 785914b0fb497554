"""The shared look of every figure: a colour per regime family, fonts, axes, labels, and saving.

Each `fig_*` function draws with `line(...)`, ends in `decorate(...)`, and the CLI writes it with
`save(fig, name, outdir)` (PNG for the README, PDF for papers). `series(ax)` reads the plotted numbers
back from the Axes, so tests can compare them with independent calls of the theory and toy code.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, never a window: `make figures` runs on headless machines

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.colors  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from sharpening.atomic import atomic_path as atomic  # noqa: E402
from sharpening.objective import Regime  # noqa: E402

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies) for the paper's regimes; Paul
# Tol's muted ones for the label-free signals. Keys: the regime families of Regime.family, typeset.
COLORS = {
    "task reward": "#0072B2",  # blue
    "sharpening": "#D55E00",  # vermillion
    "tempered": "#009E73",  # green
    "tilted": "#CC79A7",  # reddish purple
    "mixed": "#E69F00",  # orange: optimization with both alpha > 0 and beta_inv > 0
    "self likelihood": "#882255",  # wine: entropy minimization, sharpening's sibling
    "neg entropy": "#AA4499",  # purple
    "self certainty": "#999933",  # olive
    "majority vote": "#56B4E9",  # sky blue: a pseudo-label, the task reward's sibling
    "random reward": "#9A9A9A",  # light grey
    "base": "#555555",  # grey: the reference model pi_ref itself
    "theory": "#000000",  # black: closed-form predictions drawn over measurements
}
# Within a family, the strength of the task-reward tilt is told apart by the dash pattern.
DASHES = {0.0: "-", 1.0: "-", 100.0: "--", 1e4: ":"}
# Several alphas of one family in one panel are told apart by the marker.
ALPHA_MARKERS = {0.5: "v", 1.0: "o", 1.25: "s", 2.0: "^", 4.0: "D"}

RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.6,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # embed TrueType, so the text stays editable and searchable in the PDF
}
PANEL_SIZE = (3.4, 2.6)  # inches per panel
LEGEND_ROW = 0.2  # inches of figure height per row of a figure-wide legend


def family(regime: Regime | None) -> str:
    """The regime's family (Regime.family, typeset: 'task reward', 'sharpening', 'majority vote', ...), or base (None)."""
    return "base" if regime is None else regime.family.replace("_", " ")


# How Regime.name's parameters are typeset in a legend.
_TYPESET = {"a": "α", "b": "β⁻¹"}
_OMIT = {"alpha": "a", "beta_inv": "b"}


def label(regime: Regime | None, omit: tuple[str, ...] = ()) -> str:
    """A legend entry: Regime.name typeset, e.g. 'tilted α=2, β⁻¹=100' for 'tilted a=2 b=100'.

    omit: parameters not to print because they vary along an axis ("alpha", "beta_inv").
    """
    if regime is None:
        return "base model π_ref"
    name, *params = regime.name.split(" ")
    skip = {_OMIT[k] for k in omit}
    shown = []
    for param in params:
        key, value = param.split("=", 1)
        if key not in skip:
            shown.append(f"{_TYPESET.get(key, key)}={value}")
    return f"{name.replace('_', ' ')} {', '.join(shown)}".strip()


def line(regime: Regime | None = None, omit: tuple[str, ...] = (), **overrides) -> dict:
    """Keyword arguments for ax.plot: colour by family, dashes by beta_inv, a label naming the regime."""
    kw = {"color": COLORS[family(regime)], "label": label(regime, omit)}
    if regime is not None:
        kw["linestyle"] = DASHES.get(regime.beta_inv, "-.")
    kw.update(overrides)
    return kw


def shade(color: str, amount: float) -> str:
    """The colour mixed toward white (amount > 0) or black (amount < 0) by |amount| in [0, 1]."""
    rgb = np.array(matplotlib.colors.to_rgb(color))
    target = np.ones(3) if amount > 0 else np.zeros(3)
    return matplotlib.colors.to_hex(rgb + abs(amount) * (target - rgb))


def apply() -> None:
    """Set the shared fonts and grid for every figure drawn after this call."""
    matplotlib.rcParams.update(RC)


def axes(nrows: int = 1, ncols: int = 1, **subplots_kw):
    """A new figure with nrows x ncols panels: one Axes, or an array of them [nrows, ncols] (squeezed)."""
    apply()
    w, h = PANEL_SIZE
    subplots_kw.setdefault("figsize", (w * ncols, h * nrows))
    subplots_kw.setdefault("layout", "constrained")
    _, ax = plt.subplots(nrows, ncols, **subplots_kw)
    return ax


def decorate(ax, xlabel: str = "", ylabel: str = "", title: str = "", xscale: str | None = None,
             yscale: str | None = None, legend: bool | str = True, ylim=None):
    """Labels (with units), scales, limits and legend: the last call of every panel. Returns ax.

    legend: True (matplotlib picks the place), a location such as "lower left", or False.
    """
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if xscale:
        ax.set_xscale(xscale)
        if xscale == "log":  # label the decades only: minor labels (3x10^-1, ...) collide
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if yscale:
        ax.set_yscale(yscale)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if legend and ax.get_legend_handles_labels()[1]:
        ax.legend(frameon=False, **({} if legend is True else {"loc": legend}))
    return ax


def log_ticks(ax, ticks, axis: str = "x"):
    """Label a log axis at these values as plain numbers (0.5, 1, 2, 4) instead of powers of ten.

    Call after decorate: setting a scale resets the ticks."""
    getattr(ax, f"set_{axis}ticks")(ticks, labels=[f"{t:g}" for t in ticks])
    return ax


def band(ax, x, values, regime: Regime | None = None, omit: tuple[str, ...] = (), quantiles=(25, 50, 75),
         **overrides):
    """Median across seeds as a line, the 25-75% range as a shaded band. values: [len(x), n_seeds].

    quantiles: (low, middle, high) percentiles; (0, 50, 100) draws the full range, for a handful of seeds."""
    values = np.asarray(values, dtype=float)
    lo, med, hi = np.nanpercentile(values, quantiles, axis=-1)
    (drawn,) = ax.plot(x, med, **line(regime, omit, **overrides))
    ax.fill_between(x, lo, hi, color=drawn.get_color(), alpha=0.2, linewidth=0)
    return drawn


def points(ax, x, values, regime: Regime | None = None, omit: tuple[str, ...] = (), **overrides):
    """Measurements: median across seeds as markers, 25-75% range as vertical bars. values: [len(x), n_seeds]."""
    lo, med, hi = np.nanpercentile(np.asarray(values, dtype=float), [25, 50, 75], axis=-1)
    kw = {**line(regime, omit), "linestyle": "none", "marker": "o", "markersize": 4, **overrides}
    (drawn,) = ax.plot(x, med, **kw)
    ax.vlines(x, lo, hi, color=drawn.get_color(), linewidth=1.2)
    return drawn


def theory(ax, x, y, label: str = "closed form", **overrides):
    """A closed-form prediction: a thin black line drawn over the measurements."""
    return ax.plot(x, y, **{"color": COLORS["theory"], "linewidth": 1.0, "label": label, **overrides})[0]


def figure_legend(axes, ncol: int = 4):
    """One legend for the whole figure, below the panels: every distinct label of every panel."""
    handles = {}
    for ax in np.ravel(axes):
        for h, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, h)
    fig = figure_of(axes)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=ncol, frameon=False)
    width, height = fig.get_size_inches()  # make room for the legend rather than squeezing the panels
    fig.set_size_inches(width, height + LEGEND_ROW * (-(-len(handles) // ncol)))
    return axes


def series(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every labelled line of an Axes as {label: (x, y)}: the numbers the figure shows."""
    return {ln.get_label(): (np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
            for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def figure_of(ax):
    """The Figure holding an Axes or an array of Axes."""
    return np.ravel(ax)[0].figure


def save(fig, name: str, outdir: str = "figures") -> list[str]:
    """Write fig as outdir/name.png and outdir/name.pdf, each atomically; close it; return the paths."""
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for ext, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = os.path.join(outdir, f"{name}.{ext}")
        with atomic(path) as tmp:
            fig.savefig(tmp, format=ext, metadata=metadata)  # no dates or versions: same seed, same bytes
        paths.append(path)
    plt.close(fig)
    return paths


