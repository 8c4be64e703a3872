"""MotionKit's ComfyUI nodes: thin declarations over motion_core (one small module per concern).

Node class names (the keys below) and the order of each node's inputs are a contract with saved
workflows: never rename or reorder them; add new inputs at the end. ``tests/golden/node_schema.json``
guards this.
"""

from __future__ import annotations

import importlib
import pkgutil

from .host import node_function

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

# Every ``nodes_<topic>.py`` module of this package contributes its own mappings, so adding a node file
# is enough to register it (the golden schema test then asks for a deliberate update of the snapshot).
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if not _info.name.startswith("nodes_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in _module.NODE_CLASS_MAPPINGS:
        if _name in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"MotionKit node {_name} is defined twice")
    for _cls in _module.NODE_CLASS_MAPPINGS.values():
        # every node function leaves the host's inference mode the same way (see host.node_function)
        setattr(_cls, _cls.FUNCTION, node_function(getattr(_cls, _cls.FUNCTION)))
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
