"""ComfyUI node pack for PAM (prompt -> mask -> caption graphs): V3 nodes, thin over pam_core.

`extension` holds ComfyUI's entry point (it imports ComfyUI, so it is only imported by ComfyUI); `prompts`
and `regions` are plain translations that work without ComfyUI.
"""
