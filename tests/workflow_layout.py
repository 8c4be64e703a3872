"""Where the nodes of a UI-format workflow sit once the frontend has loaded it -- and a layout that keeps
them apart.

The frontend draws a node's title bar (30 px) above its ``pos`` and its body ``size`` below. Saved sizes
are not what a user sees after loading: nodes that show media grow (``../shared/HOST.md``): a video-upload
node shows the clip under its widgets (about 614 px tall in all for a Load-Video-sized node), an image
loader shows its image, and output nodes show their result once the prompt ran (an image as wide as the
node). :func:`display_box` uses those grown sizes; :func:`overlaps` lists boxes that meet;
:func:`relayout` places the nodes in columns by their depth in the graph (notes first, in the first column)
so that nothing meets after previews load.

    python tests/workflow_layout.py workflows/*.json   # re-lay out the files in place
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TITLE = 30
GAP_X, GAP_Y = 60, 50
#: nodes that show a video under their widgets once the file loads: total height, with a margin over what
#: frontend 1.27.10 drew for our workflows (Load Reference Video 614, core Load Video 454, VHS Load Video 684)
VIDEO_PREVIEW_HEIGHT = {"MotionKitLoadReferenceVideo": 640, "VHS_LoadVideo": 720, "LoadVideo": 640}
#: nodes that show an image: the image is drawn as wide as the node, under the widgets
IMAGE_NODES = {"LoadImage", "SaveAnimatedWEBP", "PreviewImage", "SaveImage", "SaveVideo", "VHS_VideoCombine",
               "SaveAnimatedPNG"}
NOTES = {"Note", "MarkdownNote"}
#: the canvas zoom a workflow opens with: LiteGraph stops drawing widget text below 0.6
OPEN_SCALE = 0.8


def display_box(node: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the node as drawn after its previews loaded (title bar included)."""
    x, y = node["pos"][:2] if isinstance(node["pos"], list) else (node["pos"]["0"], node["pos"]["1"])
    w, h = node["size"][:2] if isinstance(node["size"], list) else (node["size"]["0"], node["size"]["1"])
    kind = node["type"]
    if kind in VIDEO_PREVIEW_HEIGHT:
        h = max(h, VIDEO_PREVIEW_HEIGHT[kind])
    elif kind in IMAGE_NODES:
        h = max(h, 110 + w)  # widgets + a square image as wide as the node
    return (x, y - TITLE, x + w, y + h)


def boxes_meeting(boxes: list[tuple[object, tuple[float, float, float, float]]]) -> list[tuple[object, object]]:
    """Pairs of labels whose (left, top, right, bottom) boxes meet."""
    found = []
    for i, (a, (l1, t1, r1, b1)) in enumerate(boxes):
        for b, (l2, t2, r2, b2) in boxes[i + 1:]:
            if l1 < r2 and l2 < r1 and t1 < b2 and t2 < b1:
                found.append((a, b))
    return found


def overlaps(workflow: dict) -> list[tuple[int, int]]:
    """Pairs of node ids whose drawn boxes (with previews grown, :func:`display_box`) meet."""
    return boxes_meeting([(n["id"], display_box(n)) for n in workflow["nodes"]])


def _depths(workflow: dict) -> dict[int, int]:
    """Column of each node: 0 for nodes without inputs, else one more than its deepest source."""
    sources: dict[int, set[int]] = {n["id"]: set() for n in workflow["nodes"]}
    for link in workflow.get("links") or []:
        src, dst = (link[1], link[3]) if isinstance(link, list) else (link["origin_id"], link["target_id"])
        sources[dst].add(src)
    depth: dict[int, int] = {}

    def visit(nid: int, path: frozenset = frozenset()) -> int:
        if nid not in depth:
            depth[nid] = 0 if not sources[nid] else 1 + max(visit(s, path | {nid}) for s in sources[nid]
                                                            if s not in path)
        return depth[nid]

    for node in workflow["nodes"]:
        visit(node["id"])
    return depth


def relayout(workflow: dict, origin: tuple[float, float] = (40.0, 80.0)) -> dict:
    """Place every node in a column by its depth, stacked in the saved ``order`` with room for previews;
    notes go first in column 0. Sets the zoom the workflow opens with to :data:`OPEN_SCALE`."""
    depth = _depths(workflow)
    links = [(link[1], link[3]) if isinstance(link, list) else (link["origin_id"], link["target_id"])
             for link in workflow.get("links") or []]
    feeds = {src for src, _ in links}
    columns: dict[int, list[dict]] = {}
    for node in workflow["nodes"]:
        columns.setdefault(0 if node["type"] in NOTES else depth[node["id"]], []).append(node)
    placed_y: dict[int, float] = {}

    def rank(node: dict) -> tuple:
        """Notes first, then the nodes that feed others (the main chain) level with their sources, and the
        nodes that only show a result (previews, saves) at the bottom of their column."""
        sources = [placed_y[src] for src, dst in links if dst == node["id"] and src in placed_y]
        return (node["type"] not in NOTES, node["id"] not in feeds,
                sum(sources) / len(sources) if sources else 0.0, node.get("order", 0), node["id"])

    x = origin[0]
    for column in sorted(columns):
        y = origin[1]
        width = 0.0
        for node in sorted(columns[column], key=rank):
            placed_y[node["id"]] = y
            node["pos"] = [x, y]
            left, top, right, bottom = display_box(node)
            y = bottom + GAP_Y + TITLE
            width = max(width, right - left)
        x += width + GAP_X
    workflow.setdefault("extra", {})["ds"] = {"scale": OPEN_SCALE, "offset": [0, 0]}
    return workflow


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        workflow = relayout(json.loads(path.read_text(encoding="utf-8")))
        assert not overlaps(workflow), (path, overlaps(workflow))
        path.write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
        print(f"{path}: {len(workflow['nodes'])} nodes laid out")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
