"""ComfyUI node pack for PAM (prompt -> mask -> caption graphs): V3 nodes, thin over pam_core.

`extension` holds ComfyUI's entry point (it imports ComfyUI, so it is only imported by ComfyUI); `types` the
socket types PAM_MODEL and PAM_REGIONS and the PAMHandle a PAM_MODEL carries; `prompts` and `regions` (the
PAMRegions a PAM_REGIONS carries) are plain translations that work without ComfyUI.
"""
