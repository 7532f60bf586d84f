"""fewstep's ComfyUI nodes: copy or link this folder into ComfyUI's ``custom_nodes`` after installing fewstep into
ComfyUI's environment (``pip install fewstep``); the nodes are :mod:`fewstep.integrations.comfyui`."""

from fewstep.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
