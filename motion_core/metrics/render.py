"""Pictures of evaluations, as ComfyUI IMAGEs ``[1, H, W, 3]``: the two videos' tracks side by side with the
scores, a ranked comparison table, and the metric curves of a training run."""

from __future__ import annotations

import colorsys
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .evaluate import SCORE_KEYS, MotionEvaluation

__all__ = ["render_comparison", "render_evaluation", "render_training_curves"]

_BG = (250, 250, 248)
_INK = (40, 40, 40)
_FAINT = (110, 110, 110)
#: tracks drawn per video (the fastest first)
DRAWN_TRACKS = 300
LABELS = {"motion_fidelity": "motion fidelity", "text_alignment": "text alignment (CLIP-T)",
          "temporal_consistency": "temporal consistency", "appearance_leakage": "appearance leakage"}
SHORT = {"motion_fidelity": "motion", "text_alignment": "CLIP-T", "temporal_consistency": "consistency",
         "appearance_leakage": "leakage"}


def _font(size: int = 12) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _to_image(img: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _frame_picture(frame: torch.Tensor, width: int, height: int, dim: float = 0.55) -> Any:
    from PIL import Image

    arr = (frame[..., :3].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr).resize((width, height), Image.BILINEAR)
    bg = Image.new("RGB", img.size, (255, 255, 255))
    return Image.blend(img, bg, 1 - dim) if dim < 1 else img


def _direction_color(dx: float, dy: float, speed: float, still: float) -> tuple[int, int, int]:
    if speed < still:
        return (150, 150, 150)
    hue = (math.atan2(-dy, dx) / (2 * math.pi)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_tracks(draw: Any, tracks: Any, speeds: torch.Tensor, x0: int, y0: int, scale_x: float, scale_y: float) -> None:
    from .fidelity import STILL

    if tracks.count == 0:
        return
    order = torch.argsort(speeds, descending=True)[:DRAWN_TRACKS]
    pts = tracks.points
    norm = max(tracks.width, tracks.height)
    for i in order.tolist():
        p = pts[i]
        d = p[-1] - p[0]
        color = _direction_color(float(d[0]) / norm, float(d[1]) / norm, float(speeds[i]), STILL)
        line = [(x0 + float(x) * scale_x, y0 + float(y) * scale_y) for x, y in p.tolist()]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        ex, ey = line[-1]
        draw.ellipse([ex - 2, ey - 2, ex + 2, ey + 2], fill=color)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_evaluation(ev: MotionEvaluation, *, panel_height: int = 256, title: str | None = None) -> torch.Tensor:
    """The reference's and the generated video's tracks side by side (drawn on their first frame, colored by
    direction, gray = still), and the scores beneath."""
    from PIL import Image, ImageDraw

    panels = []
    for frames, tracks, speeds in ((ev.reference_frames, ev.reference_tracks, ev.fidelity.reference_speed),
                                   (ev.generated_frames, ev.generated_tracks, ev.fidelity.generated_speed)):
        h, w = frames.shape[1], frames.shape[2]
        pw = max(64, round(panel_height * w / h))
        panels.append((frames, tracks, speeds, pw))
    gap, margin = 16, 12
    width = max(520, sum(p[3] for p in panels) + gap + 2 * margin)
    lines = [f"{LABELS[k]}: {_fmt(getattr(ev, k))}  ({'higher' if up else 'lower'} is better)"
             for k, up in SCORE_KEYS.items()]
    lines.append(f"tracker {ev.reference_tracks.tracker}: {ev.reference_tracks.count} reference tracks, "
                 f"{ev.generated_tracks.count} generated, {ev.frames.get('compared', 0)} frames compared")
    if ev.prompt:
        lines.append(f"prompt: {ev.prompt[:90]}")
    lines += [f"note: {n}" for n in ev.notes]
    text_top = margin + 18 + panel_height + 10
    wrapped: list[str] = []
    per_line = max(40, (width - 2 * margin) // 6)
    for line in lines:
        while len(line) > per_line:
            cut = line.rfind(" ", 0, per_line)
            cut = cut if cut > 0 else per_line
            wrapped.append(line[:cut])
            line = "    " + line[cut:].lstrip()
        wrapped.append(line)
    height = text_top + 16 * len(wrapped) + margin
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    font, bold = _font(12), _font(14)
    x = margin
    for (frames, tracks, speeds, pw), name in zip(panels, ("reference", "generated")):
        img.paste(_frame_picture(frames[0], pw, panel_height), (x, margin + 18))
        _draw_tracks(draw, tracks, speeds, x, margin + 18, pw / tracks.width, panel_height / tracks.height)
        draw.text((x, margin), f"{name} ({tracks.width}x{tracks.height}, {tracks.count} tracks)", fill=_INK, font=font)
        x += pw + gap
    if title:
        draw.text((x, margin), title, fill=_INK, font=font)
    y = text_top
    for i, line in enumerate(wrapped):
        draw.text((margin, y), line, fill=_INK if i == 0 else (_FAINT if line.startswith(("note", "    ")) else _INK),
                  font=bold if i == 0 else font)
        y += 16
    return _to_image(img)


def ranking(rows: Sequence[tuple[str, MotionEvaluation]]) -> list[int]:
    """Indices of ``rows`` best first: by motion fidelity, then text alignment, then lower leakage."""
    def key(i: int) -> tuple:
        ev = rows[i][1]
        return (-ev.motion_fidelity, -(ev.text_alignment if ev.text_alignment is not None else 0.0),
                ev.appearance_leakage if ev.appearance_leakage is not None else 0.0, i)
    return sorted(range(len(rows)), key=key)


def render_comparison(reference: torch.Tensor, rows: Sequence[tuple[str, MotionEvaluation]], *,
                      thumb: int = 96) -> torch.Tensor:
    """A table ranking generations of one reference (best first, by motion fidelity): a thumbnail of each video's
    middle frame and every score, the best value of each column in bold green."""
    from PIL import Image, ImageDraw

    order = ranking(rows)
    margin, row_h = 12, thumb + 8
    cols = [("rank", 44), ("", thumb + 12), ("label", 180)] + [(SHORT[k], 110) for k in SCORE_KEYS]
    width = margin * 2 + sum(c[1] for c in cols)
    height = margin * 2 + 40 + row_h * (len(rows) + 1) + 36
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    font, bold = _font(12), _font(14)
    draw.text((margin, margin), "Motion comparison: ranked by motion fidelity (higher is better; leakage: lower is "
              "better)", fill=_INK, font=bold)
    y = margin + 22
    x = margin
    for name, w in cols:
        draw.text((x, y), name, fill=_FAINT, font=font)
        x += w
    y += 18
    best = {}
    for k, up in SCORE_KEYS.items():
        values = [getattr(ev, k) for _, ev in rows if getattr(ev, k) is not None]
        if values:
            best[k] = max(values) if up else min(values)

    def thumbnail(frames: torch.Tensor) -> Any:
        frame = frames[frames.shape[0] // 2]
        h, w = frame.shape[:2]
        s = thumb / max(h, w)
        return _frame_picture(frame, max(1, round(w * s)), max(1, round(h * s)), dim=1.0)

    def row(rank: str, picture: Any, label: str, values: Mapping[str, float | None] | None) -> None:
        nonlocal y
        x = margin
        draw.text((x, y + thumb // 2 - 6), rank, fill=_INK, font=bold)
        x += cols[0][1]
        img.paste(picture, (x, y))
        x += cols[1][1]
        draw.text((x, y + thumb // 2 - 6), label[:26], fill=_INK, font=bold if rank == "1" else font)
        x += cols[2][1]
        for k in SCORE_KEYS:
            if values is not None:
                v = values.get(k)
                top = v is not None and k in best and abs(v - best[k]) < 1e-12 and len(rows) > 1
                draw.text((x, y + thumb // 2 - 6), _fmt(v), fill=(20, 130, 40) if top else _INK,
                          font=bold if top else font)
            x += 110
        draw.line([margin, y + row_h - 4, width - margin, y + row_h - 4], fill=(225, 225, 225))
        y += row_h

    row("ref", thumbnail(reference), "reference", None)
    for place, i in enumerate(order, start=1):
        label, ev = rows[i]
        row(str(place), thumbnail(ev.generated_frames), label, ev.scores())
    tracker = rows[0][1].reference_tracks.tracker if rows else "-"
    draw.text((margin, y + 6), f"tracker: {tracker}; CLIP model: {rows[0][1].clip_model if rows else None}",
              fill=_FAINT, font=font)
    return _to_image(img)


def render_training_curves(history: Sequence[Mapping[str, Any]], *, width: int = 768, height: int = 384
                           ) -> torch.Tensor:
    """The loss curve, with the checkpoint scores (motion fidelity, CLIP-T) drawn beside it when the run scored
    its previews; the best checkpoint's step is marked in the scores' title."""
    from ..training import render_loss_curve

    loss = render_loss_curve(history, width=width, height=height)
    keys = [k for k in ("motion_fidelity", "text_alignment") if any(k in h for h in history)]
    if not keys:
        return loss
    scored = [{"step": h["step"], **{k: h[k] for k in keys if k in h}} for h in history if any(k in h for k in keys)]
    curves = render_loss_curve(scored, keys=keys, width=width // 2 + 64, height=height, smoothing=0.0)
    return torch.cat([loss, curves], dim=2)
