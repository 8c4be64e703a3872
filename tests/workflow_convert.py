"""UI-format workflow (what users drag into ComfyUI) -> API-format prompt (what ``/prompt`` executes).

ComfyUI has no backend converter: the frontend does this. We do what it does for classic nodes:

* a node's *widget* inputs are its INT/FLOAT/STRING/BOOLEAN/COMBO inputs (not ``forceInput``), in
  ``INPUT_TYPES`` order, required then optional; ``widgets_values`` holds their values positionally;
* an INT widget with ``control_after_generate`` (and, as the frontend does, any INT named ``seed`` or
  ``noise_seed``) is followed in ``widgets_values`` by the control mode (``"fixed"``, ``"randomize"``...),
  which is not an input;
* a *required* combo with ``image_upload``/``video_upload``/``animated_image_upload`` gets an upload
  button: the frontend (1.27, extension ``Comfy.UploadImage``) appends an ``upload`` input to the
  *required* inputs, so the button's value (``"image"``) is saved after the last required widget and
  before the optional ones; a workflow without it (older frontends) is accepted too (decided by the
  length of ``widgets_values``);
* a saved workflow with *fewer* values than widgets predates the trailing inputs: they keep their
  defaults (that is why new inputs go at the end);
* socket inputs and widgets converted to inputs take their value from the link ending at them
  (``[link_id, from_node, from_slot, to_node, to_slot, type]``, or the newer dict form) as
  ``[str(from_node), from_slot]``;
* virtual nodes are not sent: ``Note``/``MarkdownNote`` vanish, a ``Reroute`` is followed to its source,
  a ``PrimitiveNode``'s value is already in its target's ``widgets_values``; muted nodes (mode 2) are left
  out; bypassed nodes (mode 4) pass their first input of the same type through.
"""

from __future__ import annotations

from typing import Any

from executor import all_inputs, input_kind, is_link, is_widget, spec_options

VIRTUAL_NOTES = {"Note", "MarkdownNote"}
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
MODE_MUTED, MODE_BYPASS = 2, 4
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
SEED_NAMES = ("seed", "noise_seed")


class WorkflowError(ValueError):
    pass


def _links(workflow: dict) -> dict[int, dict]:
    out = {}
    for link in workflow.get("links", []) or []:
        if isinstance(link, dict):
            out[int(link["id"])] = {"from": link["origin_id"], "from_slot": link["origin_slot"],
                                    "to": link["target_id"], "to_slot": link["target_slot"],
                                    "type": link.get("type")}
        else:
            lid, src, src_slot, dst, dst_slot, typ = link[:6]
            out[int(lid)] = {"from": src, "from_slot": src_slot, "to": dst, "to_slot": dst_slot, "type": typ}
    return out


def widget_plan(cls: type) -> list[tuple[str, int, int]]:
    """(widget input name, control values after it, upload values after it) in ``widgets_values`` order.

    The upload button's value follows the last *required* widget (see the module docstring)."""
    plan = []
    declared = all_inputs(cls)
    has_upload = any(section == "required" and input_kind(spec) == "COMBO"
                     and any(spec_options(spec).get(f) for f in UPLOAD_FLAGS)
                     for section, spec in declared.values())
    last_required = None
    for name, (section, spec) in declared.items():
        if not is_widget(spec):
            continue
        opts = spec_options(spec)
        control = 1 if input_kind(spec) == "INT" and (opts.get("control_after_generate") or name in SEED_NAMES) else 0
        plan.append([name, control, 0])
        if section == "required":
            last_required = len(plan) - 1
    if has_upload and last_required is not None:
        plan[last_required][2] = 1
    return [tuple(entry) for entry in plan]


def ui_classes_from_object_info(object_info: dict) -> dict[str, type]:
    """Node classes as the frontend sees them, from a live host's ``/object_info``: each has the
    ``INPUT_TYPES`` (in the declared ``input_order``), ``RETURN_TYPES`` and ``OUTPUT_NODE`` the converter
    reads, so workflows with any installed pack's nodes convert exactly as the frontend converts them."""
    classes: dict[str, type] = {}
    for name, info in object_info.items():
        declared = info.get("input") or {}
        order = info.get("input_order") or {}
        inputs: dict[str, dict] = {}
        for section in ("required", "optional", "hidden"):
            specs = declared.get(section) or {}
            names = list(order.get(section) or []) + [n for n in specs if n not in (order.get(section) or [])]
            inputs[section] = {n: tuple(specs[n]) for n in names if n in specs}
        classes[name] = type(name, (), {
            "INPUT_TYPES": classmethod(lambda cls, _inputs=inputs: _inputs),
            "RETURN_TYPES": tuple(t if isinstance(t, str) else "COMBO" for t in info.get("output") or ()),
            "OUTPUT_NODE": bool(info.get("output_node")),
            "FUNCTION": "",
        })
    return classes


def map_widgets_values(cls: type, values: list | dict, node_label: str) -> dict[str, Any]:
    """Widget input name -> saved value (trailing widgets missing from an older workflow are left out)."""
    plan = widget_plan(cls)
    if isinstance(values, dict):  # some packs save widgets_values by name
        return {name: values[name] for name, _, _ in plan if name in values}
    values = list(values or [])
    with_upload = sum(1 + c + u for _, c, u in plan)
    without_upload = sum(1 + c for _, c, _ in plan)
    if len(values) > with_upload:
        raise WorkflowError(f"{node_label}: {len(values)} widget values for {with_upload} widget slots "
                            f"({[n for n, _, _ in plan]}): was it saved by a newer version of the node?")
    use_upload = len(values) == with_upload and with_upload != without_upload
    mapped: dict[str, Any] = {}
    i = 0
    for name, control, upload in plan:
        if i >= len(values):
            break  # older workflow: this and the following widgets keep their defaults
        mapped[name] = values[i]
        i += 1 + control + (upload if use_upload else 0)
    return mapped


def ui_to_api(workflow: dict, node_classes: dict[str, type]) -> dict[str, dict]:
    """Convert a UI-format workflow into an API-format prompt for ``node_classes``."""
    if "nodes" not in workflow:
        raise WorkflowError("not a UI-format workflow (no 'nodes'); API-format prompts need no conversion")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = _links(workflow)

    def source_of(link_id: int | None, seen: frozenset = frozenset()) -> list | None:
        """[node_id, slot] that really produces the value on ``link_id`` (through reroutes/bypasses)."""
        if link_id is None or link_id not in links:
            return None
        if link_id in seen:
            raise WorkflowError(f"link {link_id} is part of a cycle of reroutes/bypassed nodes")
        link = links[link_id]
        src = nodes.get(link["from"])
        if src is None:
            return None
        if src["type"] == REROUTE:
            return source_of((src.get("inputs") or [{}])[0].get("link"), seen | {link_id})
        if src["type"] == PRIMITIVE:
            return None  # its value is in the target's widgets_values
        mode = src.get("mode", 0)
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASS:
            out_type = link.get("type")
            for inp in src.get("inputs") or []:
                if inp.get("link") is not None and (out_type is None or inp.get("type") == out_type):
                    return source_of(inp["link"], seen | {link_id})
            return None
        return [str(src["id"]), int(link["from_slot"])]

    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in VIRTUAL_NOTES or ntype in (REROUTE, PRIMITIVE):
            continue
        if node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        label = f"node {node['id']} ({ntype})"
        cls = node_classes.get(ntype)
        if cls is None:
            raise WorkflowError(f"{label}: unknown node type (is its pack installed?)")
        inputs: dict[str, Any] = map_widgets_values(cls, node.get("widgets_values", []), label)
        declared = all_inputs(cls)
        for slot, inp in enumerate(node.get("inputs") or []):
            name = inp.get("name")
            if isinstance(inp.get("widget"), dict):
                name = inp["widget"].get("name", name)
            if name not in declared:
                raise WorkflowError(f"{label}: input slot {slot} '{name}' is not an input of {ntype}")
            src = source_of(inp.get("link"))
            if src is not None:
                inputs[name] = src
            elif not is_widget(declared[name][1]):
                inputs.pop(name, None)  # an unconnected socket is simply absent
        title = node.get("title") or (node.get("properties") or {}).get("Node name for S&R") or ntype
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs, "_meta": {"title": title}}
    return prompt
