"""Tests for iluvattnshun.viz: figure structure, selections, HTML output, browser rendering, images."""

import math
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import torch

from iluvattnshun import viz


def causal_weights(
    n_layers: int, n_heads: int, q_len: int, k_len: int | None = None, seed: int = 0
) -> list[torch.Tensor]:
    """Random softmaxed causal attention, per layer (heads, q, k); query i sits at position k - q + i."""
    k_len = q_len if k_len is None else k_len
    g = torch.Generator().manual_seed(seed)
    pos_q = torch.arange(q_len) + (k_len - q_len)
    future = torch.arange(k_len)[None, :] > pos_q[:, None]
    out = []
    for _ in range(n_layers):
        scores = torch.randn(n_heads, q_len, k_len, generator=g) * 2
        out.append(torch.softmax(scores.masked_fill(future, -math.inf), dim=-1))
    return out


def x_cats(fig: Any, i: int = 0) -> list[str]:
    return list(fig.data[i].x)


def test_fig_structure_titles_mask_and_labels() -> None:
    w = causal_weights(2, 3, 5)
    labels = ["a", "=", "a", ";", "a"]  # repeated labels must stay separate cells
    fig = viz.get_fig(w, labels)

    assert len(fig.data) == 6
    assert [a.text for a in fig.layout.annotations] == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    for i, (layer, head) in enumerate([(l, h) for l in range(2) for h in range(3)]):
        z = np.asarray(fig.data[i].z, dtype=np.float64)
        assert z.shape == (5, 5)
        above = np.triu(np.ones((5, 5), dtype=bool), k=1)
        assert np.isnan(z[above]).all()
        assert not np.isnan(z[~above]).any()
        np.testing.assert_allclose(z[~above], w[layer][head].numpy()[~above], rtol=1e-6)
        assert fig.data[i].coloraxis == "coloraxis"

    cats = x_cats(fig)
    assert len(set(cats)) == 5
    assert list(fig.data[0].y) == cats
    # Every subplot is labelled with the bare tokens, queries down y and keys along x.
    assert list(fig.layout.xaxis.ticktext) == labels
    assert list(fig.layout.yaxis5.ticktext) == labels
    assert list(fig.layout.xaxis5.tickvals) == cats
    assert fig.layout.xaxis.type == "category" and fig.layout.yaxis.type == "category"
    assert fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.xaxis4.title.text == "key" and fig.layout.yaxis.title.text == "query"

    # One shared colour scale 0..1 whose 0 colour is not the blank (masked) background.
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    zero_colour = fig.layout.coloraxis.colorscale[0][1].replace(" ", "")
    assert zero_colour != fig.layout.plot_bgcolor.replace(" ", "")
    assert zero_colour not in ("rgb(255,255,255)", "white", "#fff", "#ffffff")


def test_selection_drops_out_of_range_and_keeps_positions() -> None:
    w = causal_weights(3, 4, 6)
    labels = list("abcdef")
    fig = viz.get_fig(
        w,
        labels,
        selected_layers=[1, 7, -1],
        selected_heads=[2, 2, 4],
        selected_x_toks=[4, 0, 99],
        selected_y_toks=[1, 5, -2],
    )
    assert len(fig.data) == 1
    assert [a.text for a in fig.layout.annotations] == ["L1H2"]
    z = np.asarray(fig.data[0].z, dtype=np.float64)
    # Rows are queries at positions 1 and 5, columns keys at 0 and 4 (sorted); key 4 is query 1's future.
    expected = w[1][2].numpy()[np.ix_([1, 5], [0, 4])].astype(np.float64)
    expected[0, 1] = np.nan
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    assert list(fig.layout.xaxis.ticktext) == ["a", "e"]
    assert list(fig.layout.yaxis.ticktext) == ["b", "f"]


@pytest.mark.parametrize(
    "kwarg, value",
    [
        ("selected_layers", [5, -1]),
        ("selected_heads", [3]),
        ("selected_x_toks", []),
        ("selected_y_toks", [10, 11]),
    ],
)
def test_empty_selection_raises_naming_it(kwarg: str, value: list[int]) -> None:
    w = causal_weights(2, 3, 4)
    with pytest.raises(ValueError, match=kwarg):
        kwargs: dict[str, Any] = {kwarg: value}
        viz.get_fig(w, list("abcd"), **kwargs)


def test_tensor_numpy_and_batch_of_one_agree() -> None:
    w = causal_weights(2, 2, 4)
    labels = list("wxyz")
    figs = [
        viz.get_fig(w, labels),
        viz.get_fig([t.numpy() for t in w], labels),
        viz.get_fig([t[None] for t in w], labels),  # (1, heads, q, k) as the model returns it
        viz.get_fig([t.to(torch.bfloat16).float() for t in w], labels),
    ]
    for fig in figs[1:3]:
        for a, b in zip(figs[0].data, fig.data):
            np.testing.assert_array_equal(np.asarray(a.z, dtype=float), np.asarray(b.z, dtype=float))
    assert len(figs[3].data) == 4


def test_bad_input_errors() -> None:
    w = causal_weights(2, 2, 4)
    with pytest.raises(ValueError, match="batch of 2"):
        viz.get_fig([torch.stack([t, t]) for t in w], list("abcd"))
    with pytest.raises(ValueError, match="3 token_labels"):
        viz.get_fig(w, list("abc"))
    with pytest.raises(ValueError, match="empty"):
        viz.get_fig([], [])
    with pytest.raises(ValueError, match=r"attn_weights\[1\] has shape"):
        viz.get_fig([w[0], w[1][:1]], list("abcd"))
    with pytest.raises(ValueError, match="expected"):
        viz.get_fig([w[0][0]], list("abcd"))


def test_kv_cache_shaped_attention_offsets_queries() -> None:
    # Two new queries over five keys: queries sit at positions 3 and 4.
    w = causal_weights(1, 1, 2, k_len=5)
    fig = viz.get_fig(w, list("abcde"))
    z = np.asarray(fig.data[0].z, dtype=np.float64)
    assert z.shape == (2, 5)
    assert np.isnan(z[0, 4]) and not np.isnan(z[0, :4]).any() and not np.isnan(z[1]).any()
    assert list(fig.layout.yaxis.ticktext) == ["d", "e"]
    with pytest.raises(ValueError, match="selected_y_toks"):
        viz.get_fig(w, list("abcde"), selected_y_toks=[0, 1, 2])


def test_labels_are_escaped_and_whitespace_visible() -> None:
    w = causal_weights(1, 1, 4)
    fig = viz.get_fig(w, ["<b>", " ", "\n", "&"])
    assert list(fig.layout.xaxis.ticktext) == ["&lt;b&gt;", "\u2423", "\u21b5", "&amp;"]


def test_save_html_standalone_atomic(tmp_path: Path) -> None:
    fig = viz.get_fig(causal_weights(2, 2, 4), list("abcd"))
    path = tmp_path / "deep" / "dir" / "attn.html"
    assert viz.save_html(fig, path) == path
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<html") or text.lstrip().lower().startswith("<!doctype")
    assert "Plotly.newPlot" in text
    assert "<script src=" not in text  # plotly.js is inline, no CDN needed
    assert len(text) > 1_000_000  # the embedded library is ~4.5 MB
    assert "L1H1" in text and "heatmap" in text

    # Overwrites in place and leaves no temporary files behind.
    viz.save_html(viz.accuracy_per_depth_fig({"r": {0: 0.5}}), path)
    assert "L1H1" not in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in path.parent.iterdir()) == ["attn.html"]


def read_png_rgb(path: Path) -> np.ndarray:
    """Decodes an 8-bit, non-interlaced RGB/RGBA PNG into an (H, W, 3) array (no image library needed)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    assert header is not None
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    bpp = 3 if colour_type == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        row = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int64)
        if ftype == 0:
            cur = row
        elif ftype == 1:  # Sub: a running sum per channel
            cur = np.cumsum(row.reshape(width, bpp), axis=0).reshape(-1) % 256
        elif ftype == 2:  # Up
            cur = (row + prev) % 256
        else:  # Average and Paeth depend on the reconstructed left byte: sequential
            r, p, c = row.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                a = c[i - bpp] if i >= bpp else 0
                b = p[i]
                if ftype == 3:
                    c[i] = (r[i] + (a + b) // 2) & 255
                else:
                    d = p[i - bpp] if i >= bpp else 0
                    pa, pb, pc = abs(b - d), abs(a - d), abs(a + b - 2 * d)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else d)
                    c[i] = (r[i] + pred) & 255
            cur = np.array(c, dtype=np.int64)
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)[:, :, :3]


def screenshot(html: Path, png: Path, tmp_path: Path, size: tuple[int, int] = (900, 700)) -> str:
    """Renders a local HTML file in headless chromium; returns its log (stderr)."""
    chromium = shutil.which("chromium")
    assert chromium is not None
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",  # running as root in a container
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",  # let plotly finish drawing before the shot
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={png}",
        f"--window-size={size[0]},{size[1]}",
        html.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.exists(), proc.stderr[-2000:]
    return proc.stderr


needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")


@needs_chromium
def test_browser_renders_heatmaps(tmp_path: Path) -> None:
    fig = viz.get_fig(causal_weights(2, 2, 8), list("a=b;c=a<"), plot_size=250)
    html = viz.save_html(fig, tmp_path / "attn.html")
    png = tmp_path / "shot.png"
    log = screenshot(html, png, tmp_path)
    assert "Uncaught" not in log, log[-2000:]

    img = read_png_rgb(png)
    assert img.shape[:2] == (700, 900)
    non_white = (img < 245).any(axis=-1).mean()
    assert non_white > 0.10, non_white
    colours = {tuple(c) for c in img.reshape(-1, 3)[::7].tolist()}
    assert len(colours) > 50, len(colours)
    # Both ends of the colour scale appear: light cells (weight ~0) and dark ones (the diagonal's 1.0 at row 0).
    light = np.array(viz._COLOR_STOPS[0][1])
    dark = np.array(viz._COLOR_STOPS[-1][1])
    assert (np.abs(img.astype(int) - light).sum(-1) <= 12).sum() > 100
    assert (np.abs(img.astype(int) - dark).sum(-1) <= 12).sum() > 100


@needs_chromium
def test_browser_log_catches_js_errors(tmp_path: Path) -> None:
    # The check above would be vacuous if chromium did not report page errors in this log.
    html = tmp_path / "broken.html"
    html.write_text("<html><body><script>undefinedFunction();</script></body></html>", encoding="utf-8")
    log = screenshot(html, tmp_path / "broken.png", tmp_path, size=(200, 200))
    assert "Uncaught" in log


def test_accuracy_per_depth_fig() -> None:
    runs: dict[str, Mapping[int | str, float]] = {
        "2 layers": {"0": 1.0, "10": 0.1, "2": 0.5},
        "4 layers": {0: 1.0, 1: 0.9, 2: float("nan")},
    }
    fig = viz.accuracy_per_depth_fig(runs, title="sweep")
    assert [t.name for t in fig.data] == ["2 layers", "4 layers"]
    assert list(fig.data[0].x) == [0, 2, 10]  # numeric, not lexical, depth order
    assert list(fig.data[0].y) == [1.0, 0.5, 0.1]
    assert tuple(fig.layout.yaxis.range) == (0.0, 1.0)
    assert fig.layout.xaxis.title.text == "depth" and fig.layout.title.text == "sweep"

    with pytest.raises(ValueError, match="outside"):
        viz.accuracy_per_depth_fig({"r": {0: 1.5}})
    with pytest.raises(ValueError, match="not an integer"):
        viz.accuracy_per_depth_fig({"r": {"deep": 0.5}})
    with pytest.raises(ValueError, match="no depths"):
        viz.accuracy_per_depth_fig({"r": {}})
    with pytest.raises(ValueError, match="empty"):
        viz.accuracy_per_depth_fig({})


def test_attention_image_layout_and_colours() -> None:
    n_layers, n_heads, t, cell = 2, 3, 4, 5
    w = causal_weights(n_layers, n_heads, t)
    w[1][2] = torch.eye(t)  # a known map: weight 1 on the diagonal, 0 below it
    img = viz.attention_image(w, cell=cell)
    tile = t * cell
    assert img.dtype == np.uint8
    assert img.shape == (n_layers * (tile + 1) + 1, n_heads * (tile + 1) + 1, 3)

    sep = np.array(viz.SEPARATOR_RGB)
    for r in range(n_layers + 1):
        assert (img[r * (tile + 1)] == sep).all()
    for c in range(n_heads + 1):
        assert (img[:, c * (tile + 1)] == sep).all()

    top, left = 1 + 1 * (tile + 1), 1 + 2 * (tile + 1)
    block = img[top : top + tile, left : left + tile].reshape(t, cell, t, cell, 3)
    assert (block == block[:, :1, :, :1]).all()  # each entry is a flat cell x cell square
    colours = block[:, 0, :, 0]  # (q, k, 3)
    for i in range(t):
        for j in range(t):
            if j > i:
                expected = viz.MASKED_RGB
            elif j == i:
                expected = viz._COLOR_STOPS[-1][1]
            else:
                expected = viz._COLOR_STOPS[0][1]
            assert tuple(colours[i, j]) == expected, (i, j)
    assert len({viz.MASKED_RGB, viz.SEPARATOR_RGB, viz._COLOR_STOPS[0][1], viz._COLOR_STOPS[-1][1]}) == 4


def test_attention_image_selection_and_errors() -> None:
    w = causal_weights(3, 4, 6)
    img = viz.attention_image(w, layer_heads=[(2, 1), (0, 3), (0, 1), (9, 0), (0, 7)], cell=1)
    assert img.shape == (2 * 7 + 1, 2 * 7 + 1, 3)  # layers {2, 0} x heads {1, 3}
    # (2, 3) was not selected: its grid cell stays separator-coloured.
    assert (img[1:7, 8:14] == np.array(viz.SEPARATOR_RGB)).all()
    assert viz.attention_image([t[None] for t in w]).shape[:2] == viz.attention_image(w).shape[:2]
    with pytest.raises(ValueError, match="layer_heads"):
        viz.attention_image(w, layer_heads=[(3, 0)])
    with pytest.raises(ValueError, match="cell"):
        viz.attention_image(w, cell=0)


def test_get_fig_accepts_the_original_base_height() -> None:
    weights = [np.full((2, 4, 4), 0.25, dtype=np.float32)]
    small, big = (viz.get_fig(weights, list("abcd"), base_height=h, selected_x_toks=[0, 1]) for h in (200, 400))
    # each subplot base_height high and half as wide (2 keys shown for 4 queries); 1 layer, 2 heads
    assert (big.layout.height - small.layout.height, big.layout.width - small.layout.width) == (200, 2 * 100)
    with pytest.raises(ValueError, match="base_height"):
        viz.get_fig(weights, list("abcd"), base_height=0)
