"""ComfyUI entry point of MotionKit (distribution ``comfyui-motionkit``).

ComfyUI imports this folder as a package named after the folder (``custom_nodes/<folder>``) and reads
``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS`` (classic V1 registration only: no
``comfy_entrypoint`` here, since a module that has both is loaded as V1 anyway).

Two import details matter:

* ``nodes`` is imported *relatively*: ComfyUI has its own top-level module called ``nodes``, so an
  absolute ``import nodes`` would get the host's, not ours.
* ``motion_core`` is a top-level library (also used by the CLI and ``pip install -e .``), imported as
  ``motion_core`` by the node modules. Inside ComfyUI nothing puts this folder on ``sys.path``, so we add
  it (first, so that this copy of the library wins over another installed version of it).
"""

from __future__ import annotations

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.insert(0, _PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
