"""Pictures of what a model does: attention heatmaps, per-depth accuracy, TensorBoard images.

Attention weights everywhere here are a list over layers of ``(heads, q_len, k_len)`` arrays or
tensors (one sample), as ``MultilayerTransformer`` returns them with the batch dimension of size
one squeezed away. When ``q_len < k_len`` (a KV cache was in use) query ``i`` sits at absolute
position ``k_len - q_len + i``; keys at positions after a query are the masked future.
"""

import html
import operator
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from iluvattnshun.files import atomic_write

AttnLike = np.ndarray | torch.Tensor
"""One layer's attention weights: ``(heads, q, k)``, or ``(1, heads, q, k)``."""

# Light-to-dark, so the many near-zero weights recede. It starts at a light blue-grey rather than
# white because masked cells are drawn blank (white): an attended-with-zero-weight cell must not
# look like a masked one.
_COLOR_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (218, 226, 240)),
    (0.25, (150, 196, 224)),
    (0.5, (66, 146, 198)),
    (0.75, (8, 81, 156)),
    (1.0, (8, 29, 88)),
)
COLORSCALE: list[list[float | str]] = [[s, f"rgb({r},{g},{b})"] for s, (r, g, b) in _COLOR_STOPS]
"""Plotly colour scale used for attention weights in [0, 1]."""

MASKED_RGB: tuple[int, int, int] = (255, 255, 255)
"""Colour of masked (future) cells: the blank page colour."""

SEPARATOR_RGB: tuple[int, int, int] = (150, 150, 150)
"""Colour of the 1-pixel lines between maps in :func:`attention_image`."""


def _as_layers(attn_weights: Sequence[AttnLike]) -> list[np.ndarray]:
    """Converts per-layer attention weights to float32 ``(heads, q, k)`` arrays, checking shapes."""
    layers: list[np.ndarray] = []
    for i, w in enumerate(attn_weights):
        if isinstance(w, torch.Tensor):
            # .float() first: numpy has no bfloat16.
            a = w.detach().float().cpu().numpy()
        else:
            a = np.asarray(w, dtype=np.float32)
        if a.ndim == 4:
            if a.shape[0] != 1:
                raise ValueError(
                    f"attn_weights[{i}] has shape {tuple(a.shape)}: a batch of {a.shape[0]} samples; "
                    "pass one sample, e.g. [w[0] for w in attn_weights]"
                )
            a = a[0]
        if a.ndim != 3:
            raise ValueError(
                f"attn_weights[{i}] has shape {tuple(a.shape)}; expected (heads, q_len, k_len) "
                "or (1, heads, q_len, k_len)"
            )
        if a.shape[1] > a.shape[2]:
            raise ValueError(f"attn_weights[{i}] has shape {tuple(a.shape)}: q_len > k_len is not causal attention")
        if layers and a.shape != layers[0].shape:
            raise ValueError(
                f"attn_weights[{i}] has shape {tuple(a.shape)} but attn_weights[0] has {tuple(layers[0].shape)}"
            )
        layers.append(a.astype(np.float32, copy=False))
    if not layers:
        raise ValueError("attn_weights is empty: expected a list with one (heads, q_len, k_len) entry per layer")
    return layers


def _select(name: str, selected: Iterable[int] | None, n: int, what: str, lo: int = 0) -> list[int]:
    """Keeps the in-range entries of a selection (first occurrence of each, in the given order).

    Raises:
        ValueError: if nothing in range is left.
    """
    if selected is None:
        chosen = list(range(lo, n))
    else:
        given = [operator.index(s) for s in selected]  # rejects floats and strings early
        chosen = list(dict.fromkeys(s for s in given if lo <= s < n))
        if not chosen:
            raise ValueError(f"{name}={given} selects no {what}: valid indices are {lo}..{n - 1}")
    if not chosen:
        raise ValueError(f"no {what} to show")
    return chosen


def _display_label(label: str) -> str:
    """Makes a token label visible and safe in plotly text (which interprets a subset of HTML)."""
    if label == "" or label.isspace():
        label = label.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"
    return html.escape(label, quote=False)


def get_fig(
    attn_weights: Sequence[AttnLike],
    token_labels: Sequence[str],
    plot_size: int | tuple[int, int] = 300,
    font_size: int = 10,
    selected_layers: Iterable[int] | None = None,
    selected_heads: Iterable[int] | None = None,
    selected_x_toks: Iterable[int] | None = None,
    selected_y_toks: Iterable[int] | None = None,
    base_height: int | None = None,
) -> go.Figure:
    """Draws a grid of attention heatmaps, one subplot per selected layer (row) and head (column).

    Each subplot is titled ``L{layer}H{head}``; query tokens run down the y axis and key tokens along
    the x axis. The masked future (a key after its query) is NaN and shows blank; weights use a
    shared colour scale from 0 to 1 in which 0 is a visible light colour, distinct from blank.
    Axis categories are ``"{position}:{token}"`` so that repeated tokens stay separate cells (plotly
    merges equal category names); the tick text shows the bare token.

    Args:
        attn_weights: per layer, ``(heads, q_len, k_len)`` or ``(1, heads, q_len, k_len)`` arrays/tensors.
        token_labels: one label per key position (``k_len`` of them), e.g. the prompt's characters.
        plot_size: pixel size of each subplot, as one side or ``(width, height)``.
        font_size: font size of the tick labels; titles are slightly larger.
        selected_layers: layers to show, in this order (None for all); out-of-range ones are dropped.
        selected_heads: heads to show, in this order (None for all); out-of-range ones are dropped.
        selected_x_toks: key positions to show (None for all); shown in position order.
        selected_y_toks: query positions to show (None for all); shown in position order.
        base_height: the original name for sizing: each subplot this many pixels high, its width following
            the shown tokens' aspect ratio (replaces ``plot_size``).

    Returns:
        The plotly figure.

    Raises:
        ValueError: on badly shaped weights, a label count that is not ``k_len``, or a selection
            with nothing in range.
    """
    layers = _as_layers(attn_weights)
    n_heads, q_len, k_len = layers[0].shape
    labels = list(token_labels)
    if len(labels) != k_len:
        raise ValueError(f"got {len(labels)} token_labels for attention over {k_len} key positions")
    width, height = (plot_size, plot_size) if isinstance(plot_size, int) else plot_size
    if width <= 0 or height <= 0:
        raise ValueError(f"plot_size must be positive, got {plot_size}")
    offset = k_len - q_len  # absolute position of query row 0

    sel_layers = _select("selected_layers", selected_layers, len(layers), "layer")
    sel_heads = _select("selected_heads", selected_heads, n_heads, "head")
    xs = sorted(_select("selected_x_toks", selected_x_toks, k_len, "key token"))
    ys = sorted(_select("selected_y_toks", selected_y_toks, k_len, "query token", lo=offset))
    if base_height is not None:
        if base_height <= 0:
            raise ValueError(f"base_height must be positive, got {base_height}")
        width, height = max(1, round(base_height * len(xs) / len(ys))), base_height

    x_cats = [f"{p}:{_display_label(labels[p])}" for p in xs]
    y_cats = [f"{p}:{_display_label(labels[p])}" for p in ys]
    x_ticks = [_display_label(labels[p]) for p in xs]
    y_ticks = [_display_label(labels[p]) for p in ys]
    rows_idx = np.asarray(ys) - offset
    future = np.asarray(xs)[None, :] > np.asarray(ys)[:, None]  # (ny, nx)

    n_rows, n_cols = len(sel_layers), len(sel_heads)
    # Pixel gaps leave room for every subplot's own tick labels and title, so the grid reads the
    # same wherever one scrolls to; spacing fractions are derived from them.
    label_px = int(max(len(t) for t in x_ticks + y_ticks) * font_size * 0.65) + font_size
    gap_x = label_px + 2 * font_size
    gap_y = label_px + 3 * font_size + 10
    grid_w = n_cols * width + (n_cols - 1) * gap_x
    grid_h = n_rows * height + (n_rows - 1) * gap_y
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=[f"L{l}H{h}" for l in sel_layers for h in sel_heads],
        horizontal_spacing=gap_x / grid_w if n_cols > 1 else 0.0,
        vertical_spacing=gap_y / grid_h if n_rows > 1 else 0.0,
    )
    for r, layer in enumerate(sel_layers, start=1):
        for c, head in enumerate(sel_heads, start=1):
            # float32 (a fresh copy from fancy indexing) halves the base64 payload in the HTML.
            z = layers[layer][head][np.ix_(rows_idx, xs)]
            z[future] = np.nan
            fig.add_trace(
                go.Heatmap(
                    z=z,
                    x=x_cats,
                    y=y_cats,
                    coloraxis="coloraxis",
                    hoverongaps=False,
                    hovertemplate=f"L{layer}H{head}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.3f}}<extra></extra>",
                ),
                row=r,
                col=c,
            )
            axis = {"type": "category", "tickmode": "array", "tickfont": {"size": font_size}, "showgrid": False}
            fig.update_xaxes(
                axis, tickvals=x_cats, ticktext=x_ticks, title_text="key" if r == n_rows else None, row=r, col=c
            )
            fig.update_yaxes(
                axis,
                tickvals=y_cats,
                ticktext=y_ticks,
                autorange="reversed",  # query 0 at the top, as in a matrix
                title_text="query" if c == 1 else None,
                row=r,
                col=c,
            )
    fig.update_annotations(font_size=font_size + 2)  # the subplot titles
    margin = {"l": label_px + 3 * font_size + 10, "r": 110, "t": 3 * font_size + 20, "b": label_px + 3 * font_size + 10}
    fig.update_layout(
        width=grid_w + margin["l"] + margin["r"],
        height=grid_h + margin["t"] + margin["b"],
        margin=margin,
        coloraxis={"colorscale": COLORSCALE, "cmin": 0.0, "cmax": 1.0, "colorbar": {"title": {"text": "weight"}}},
        plot_bgcolor="rgb({},{},{})".format(*MASKED_RGB),
        paper_bgcolor="white",
        showlegend=False,
    )
    return fig


def save_html(fig: go.Figure, path: str | os.PathLike[str]) -> Path:
    """Writes a figure as one self-contained HTML file (plotly.js embedded; opens without a server).

    The file is written atomically (a reader never sees half a file); parent directories are created.

    Returns:
        The path written.
    """
    text: str = fig.to_html(include_plotlyjs=True, full_html=True)
    return atomic_write(path, text)


def _depth_key(run: str, key: int | str) -> int:
    try:
        return operator.index(key) if not isinstance(key, str) else int(key)
    except (TypeError, ValueError):
        raise ValueError(f"run {run!r}: depth key {key!r} is not an integer") from None


def accuracy_per_depth_fig(
    runs: Mapping[str, Mapping[int | str, float]],
    title: str = "Accuracy per depth",
) -> go.Figure:
    """Plots accuracy against depth with one line per run, e.g. to compare layer counts from a sweep.

    Args:
        runs: run name -> {depth: accuracy}. Depths may be ints or their strings (as in the
            TensorBoard tags ``val/acc_per_depth/<d>``); accuracies lie in [0, 1], NaN leaves a gap.
        title: figure title.

    Raises:
        ValueError: with no runs, an empty run, a non-integer depth or an accuracy outside [0, 1].
    """
    if not runs:
        raise ValueError("runs is empty: expected {run name: {depth: accuracy}}")
    fig = go.Figure()
    all_depths: set[int] = set()
    for name, per_depth in runs.items():
        if not per_depth:
            raise ValueError(f"run {name!r} has no depths")
        points = sorted((_depth_key(name, d), float(a)) for d, a in per_depth.items())
        for d, a in points:
            if not (np.isnan(a) or 0.0 <= a <= 1.0):
                raise ValueError(f"run {name!r}: accuracy {a} at depth {d} is outside [0, 1]")
        all_depths.update(d for d, _ in points)
        fig.add_trace(
            go.Scatter(
                x=[d for d, _ in points],
                y=[a for _, a in points],
                mode="lines+markers",
                name=str(name),
                cliponaxis=False,  # markers at accuracy 1.0 would otherwise be cut in half
                hovertemplate=f"{html.escape(str(name), quote=False)}<br>depth %{{x}}<br>accuracy %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title={"text": html.escape(title, quote=False), "x": 0.5},
        xaxis={"title": {"text": "depth"}, "dtick": 1 if len(all_depths) <= 30 else None},
        yaxis={"title": {"text": "accuracy"}, "range": [0.0, 1.0]},
        legend={"title": {"text": "run"}},
        template="plotly_white",
        width=800,
        height=500,
    )
    return fig


def _colormap(values: np.ndarray) -> np.ndarray:
    """Maps values in [0, 1] (NaN = masked) to uint8 RGB with :data:`COLORSCALE`; shape (..., 3)."""
    stops = np.array([s for s, _ in _COLOR_STOPS])
    colors = np.array([rgb for _, rgb in _COLOR_STOPS], dtype=np.float64)
    masked = np.isnan(values)
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    rgb = np.stack([np.interp(v, stops, colors[:, i]) for i in range(3)], axis=-1)
    out: np.ndarray = np.rint(rgb).astype(np.uint8)
    out[masked] = MASKED_RGB
    return out


def attention_image(
    attn_weights: Sequence[AttnLike],
    layer_heads: Iterable[tuple[int, int]] | None = None,
    cell: int | None = None,
) -> np.ndarray:
    """Renders attention maps as one RGB image: rows are layers, columns are heads.

    Pure numpy, for ``SummaryWriter.add_image(tag, img, step, dataformats="HWC")`` without an
    image-export dependency. Colours follow :data:`COLORSCALE` (0..1), masked future cells are
    :data:`MASKED_RGB`, and maps are framed by 1-pixel :data:`SEPARATOR_RGB` lines. Grid cells
    for (layer, head) pairs not selected are left in the separator colour.

    Args:
        attn_weights: per layer, ``(heads, q_len, k_len)`` or ``(1, heads, q_len, k_len)`` arrays/tensors.
        layer_heads: (layer, head) pairs to draw (None for all); out-of-range pairs are dropped.
            Rows and columns follow the order in which layers and heads first appear.
        cell: pixels per attention entry (an integer upscale); None picks one that makes each map
            about 128 pixels on its longer side (at least 1).

    Returns:
        A ``(H, W, 3)`` uint8 array.

    Raises:
        ValueError: on badly shaped weights, ``cell < 1``, or no pair in range.
    """
    layers = _as_layers(attn_weights)
    n_heads, q_len, k_len = layers[0].shape
    if cell is None:
        cell = max(1, 128 // max(q_len, k_len))
    if cell < 1:
        raise ValueError(f"cell must be >= 1 pixel, got {cell}")
    if layer_heads is None:
        pairs = [(l, h) for l in range(len(layers)) for h in range(n_heads)]
    else:
        given = [(operator.index(l), operator.index(h)) for l, h in layer_heads]
        pairs = list(dict.fromkeys((l, h) for l, h in given if 0 <= l < len(layers) and 0 <= h < n_heads))
        if not pairs:
            raise ValueError(
                f"layer_heads={given} selects no (layer, head) pair in range: "
                f"{len(layers)} layers x {n_heads} heads"
            )
    row_of = {l: i for i, l in enumerate(dict.fromkeys(l for l, _ in pairs))}
    col_of = {h: i for i, h in enumerate(dict.fromkeys(h for _, h in pairs))}

    offset = k_len - q_len
    future = np.arange(k_len)[None, :] > (np.arange(q_len) + offset)[:, None]  # (q, k)
    tile_h, tile_w = q_len * cell, k_len * cell
    img = np.empty((len(row_of) * (tile_h + 1) + 1, len(col_of) * (tile_w + 1) + 1, 3), dtype=np.uint8)
    img[...] = SEPARATOR_RGB
    for l, h in pairs:
        vals = np.where(future, np.nan, layers[l][h])
        tile = _colormap(vals).repeat(cell, axis=0).repeat(cell, axis=1)  # (q*cell, k*cell, 3)
        top = 1 + row_of[l] * (tile_h + 1)
        left = 1 + col_of[h] * (tile_w + 1)
        img[top : top + tile_h, left : left + tile_w] = tile
    return img
