"""The `pam` command line (`pam = "pam_core.cli:main"`): `main` assembles one module per command over the options
and the model loader in `common`."""

from .main import main

__all__ = ["main"]
