"""Why a video matched a query, as one picture: query tokens against the video's tokens.

One heatmap per branch: rows are the query tokens (words; expansion positions marked), columns
the sampled frames (frame branch) or the frame-aligned video tokens plus the expansion tokens
(video branch). A dot marks the column each counted query token takes its maximum from, which is
exactly what MeanMaxSim averages. Frame thumbnails with their timestamps run along the top.
`save_explanation` works from a model and a video tensor, so evaluation can call it as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Query = Union[str, Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class BranchView:
    name: str
    sim: np.ndarray  # Lq x C: query tokens x real columns
    columns: List[str]  # column labels (frame times, "+1" ... for expansion tokens)
    chosen: np.ndarray  # Lq: argmax column per query token (-1 where the token does not count)
    score: float  # the branch's MeanMaxSim (or MaxSim) score


@dataclass
class Explanation:
    path: str
    query: str
    rows: List[str]  # query token labels, top to bottom
    row_kinds: List[str]  # "word" (start/end tokens included), "expansion" (padding that counts), "ignored"
    branches: List[BranchView]
    num_frames: int  # real frames shown (one thumbnail and one frame-branch column each)
    size_px: Tuple[int, int]  # width, height of the PNG
    axes: Dict[str, object]  # matplotlib axes by role, for inspection


def token_labels(tokenizer, ids: Sequence[int], text_mask: Sequence[int]) -> List[str]:
    """Readable text of each query position ("[pad]" beyond the text)."""
    pieces = _piece_fn(tokenizer)
    out = []
    for i, m in zip(ids, text_mask):
        if not m:
            out.append("[pad]")
            continue
        p = pieces(int(i))
        out.append({"<|startoftext|>": "<start>", "<|endoftext|>": "<end>"}.get(p, p))
    return out


def _piece_fn(tokenizer):
    sp = getattr(tokenizer, "_sp", None)
    if sp is not None:  # sentencepiece
        return lambda i: sp.id_to_piece(i).replace("\u2581", "") or sp.id_to_piece(i)
    inner = getattr(tokenizer, "_tokenizer", None)
    if inner is not None and hasattr(inner, "decode"):  # open_clip's BPE
        return lambda i: inner.decode([i]).strip() or f"#{i}"
    from ..models.tokenization_clip import default_tokenizer

    bpe = default_tokenizer()
    return lambda i: bpe.decode([i]).strip() or f"#{i}"


@torch.no_grad()
def explain_tokens(model, ids: torch.Tensor, text_mask: torch.Tensor, video: torch.Tensor, video_mask: torch.Tensor):
    """Query tokens, their mask, and each branch's (tokens, mask) for one query and one video."""
    device = next(model.parameters()).device
    text = model.encode_text(ids[None].to(device), text_mask[None].to(device))
    videos = model.encode_video(video[None].to(device), video_mask[None].to(device))
    return text, videos


def thumbnails_from_video(video: torch.Tensor, video_mask: torch.Tensor, mean: Sequence[float],
                          std: Sequence[float]) -> torch.Tensor:
    """uint8 frames (n_real x 3 x R x R) back from a normalised video tensor (T x 3 x R x R), for callers
    such as evaluation that hold only the model's input."""
    frames = video[video_mask.bool()].float().cpu()  # n x 3 x R x R
    frames = frames * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return (frames * 255).round().clamp(0, 255).to(torch.uint8)


def save_explanation(model, query: Query, video: torch.Tensor, video_mask: torch.Tensor, timestamps,
                     thumbnails: Optional[torch.Tensor], out_path: str, tokenizer=None, max_words: Optional[int] = None,
                     title: Optional[str] = None, dpi: int = 100) -> Explanation:
    """Draw the explanation of `video` (T x 3 x R x R, mask T) for `query` into a PNG at out_path.

    query: a string (tokenized with `tokenizer`, default the model's, to `max_words`) or (ids, mask).
    timestamps: T seconds, or None (columns are then numbered frames); thumbnails: n_real x 3 x h x w
    uint8 frames (see thumbnails_from_video), or None for no picture strip.
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone
    from matplotlib.gridspec import GridSpec

    tokenizer = tokenizer if tokenizer is not None else model.clip.tokenizer
    if isinstance(query, str):
        words = max_words or 32
        ids, text_mask = (t[0] for t in tokenizer.tokenize([query], words))
        query_text = query
    else:
        ids, text_mask = query
        query_text = " ".join(token_labels(tokenizer, ids.tolist(), text_mask.tolist())[1:int(text_mask.sum()) - 1])
    text, videos = explain_tokens(model, ids, text_mask, video, video_mask)
    q = text.tokens[0].float().cpu()  # Lq x D
    counted = text.mask[0].bool().cpu()  # Lq
    labels = token_labels(tokenizer, ids.tolist(), text_mask.tolist())
    kinds = ["word" if m and c else "expansion" if c else "ignored" for m, c in zip(text_mask.tolist(), counted.tolist())]
    if len(q) != len(labels):  # a single pooled query token (mean-pooling baseline)
        labels, kinds = ["<pooled>"], ["word"]

    frame_mask = video_mask.bool().cpu()
    n_real = int(frame_mask.sum())
    if timestamps is None:
        frame_cols = [f"frame {i + 1}" for i in range(n_real)]
    else:
        frame_cols = [f"{float(t):.1f}s" for t in torch.as_tensor(timestamps)[frame_mask].tolist()]
    views = []
    interaction = model.config.interaction
    weights = counted.float() / (counted.sum().clamp(min=1) if interaction == "mms" else 1)
    for name, ts in videos.items():
        tokens, mask = ts.tokens[0].float().cpu(), ts.mask[0].bool().cpu()
        if name == "video":
            extra = len(mask) - len(frame_mask)
            cols = frame_cols + [f"+{i + 1}" for i in range(extra)]
        elif name == "frame":
            cols = list(frame_cols)
        else:
            cols = ["mean"]
        sim = (q @ tokens[mask].t()).numpy()  # Lq x C
        chosen = np.where(counted.numpy(), sim.argmax(1), -1)
        score = float((weights * torch.from_numpy(sim).max(1).values).sum())
        views.append(BranchView(name, sim, cols[: sim.shape[1]], chosen, score))

    # ---- layout: a thumbnail strip over each heatmap, widths proportional to their columns ----
    widths = [max(len(v.columns), 1) for v in views]
    n_rows = len(labels)
    fig_w = min(40.0, 2.6 + 0.75 * sum(widths) + 1.2 * len(views))
    fig_h = min(40.0, 1.6 + 0.24 * n_rows + (1.1 if thumbnails is not None else 0.0))
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    strip_h = 1.1 / fig_h if thumbnails is not None else 0.0
    gs = GridSpec(2, len(views) + 1, figure=fig, width_ratios=widths + [0.25], top=1 - 0.95 / fig_h,
                  bottom=0.65 / fig_h, left=min(0.2, 1.3 / fig_w), right=1 - 0.9 / fig_w,
                  height_ratios=[strip_h, 1 - strip_h] if thumbnails is not None else [0.001, 1], wspace=0.08, hspace=0.04)
    vmin = min(float(v.sim.min()) for v in views)
    vmax = max(float(v.sim.max()) for v in views)
    axes: Dict[str, object] = {}
    image = None
    for j, v in enumerate(views):
        ax = fig.add_subplot(gs[1, j])
        axes[f"{v.name}_heatmap"] = ax
        shown = v.sim.copy()
        image = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        for r, kind in enumerate(kinds):  # dim the positions that do not count
            if kind == "ignored":
                ax.axhspan(r - 0.5, r + 0.5, color="white", alpha=0.7, lw=0)
        rows = np.nonzero(v.chosen >= 0)[0]
        ax.scatter(v.chosen[rows], rows, s=22, facecolors="none", edgecolors="red", linewidths=1.2, label="max")
        ax.set_xticks(range(len(v.columns)))
        ax.set_xticklabels(v.columns, rotation=90 if len(v.columns) > 8 else 0, fontsize=8)
        branch_title = f"{v.name} branch: {v.score:.3f}"
        ax.set_yticks(range(n_rows))
        if j == 0:
            ax.set_yticklabels(labels, fontsize=8)
            for tick, kind in zip(ax.get_yticklabels(), kinds):
                if kind == "expansion":
                    tick.set_color("tab:blue")
                    tick.set_fontstyle("italic")
                elif kind == "ignored":
                    tick.set_color("grey")
        else:
            ax.set_yticklabels([])
        if thumbnails is not None:
            top = fig.add_subplot(gs[0, j], sharex=ax)
            axes[f"{v.name}_thumbnails"] = top
            _draw_strip(top, thumbnails, len(v.columns), v.name)
            top.set_axis_off()
            top.set_title(branch_title, fontsize=10)
        else:
            ax.set_title(branch_title, fontsize=10)
    cax = fig.add_subplot(gs[1, -1])
    fig.colorbar(image, cax=cax, label="cosine similarity")
    axes["colorbar"] = cax
    total = sum(v.score for v in views)
    head = title or f'"{query_text}"'
    fig.suptitle(f"{head}\nscore {total:.3f} = " + " + ".join(f"{v.name} {v.score:.3f}" for v in views)
                 + "   (red circle: the token each query row takes; blue rows: query expansion)", fontsize=10)
    fig.savefig(out_path, dpi=dpi)
    size = tuple(int(round(x)) for x in fig.get_size_inches() * dpi)
    return Explanation(out_path, query_text, labels, kinds, views, n_real, size, axes)


def _draw_strip(ax, thumbnails: torch.Tensor, columns: int, branch: str) -> None:
    """Thumbnails in the first len(thumbnails) columns; expansion columns get a labelled grey tile."""
    from matplotlib.patches import Rectangle

    thumbs = thumbnails.permute(0, 2, 3, 1).cpu().numpy()  # n x h x w x 3
    n = min(len(thumbs), columns)
    for i in range(n):
        ax.imshow(thumbs[i], extent=(i - 0.45, i + 0.45, 0, 1), aspect="auto")
    for i in range(n, columns):
        ax.add_patch(Rectangle((i - 0.45, 0), 0.9, 1, color="0.85"))
        ax.text(i, 0.5, f"expansion\n+{i - n + 1}", ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.5, columns - 0.5)
    ax.set_ylim(0, 1)
