"""ComfyUI node pack for PAM (prompt -> mask -> caption graphs), thin over pam_core. Nodes arrive with issue #5."""
