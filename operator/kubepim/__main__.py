"""``python -m kubepim`` runs the operator."""

import sys

# kopf imports the official kubernetes client whenever it is installed, only to recognise its
# objects, which the operator never hands it: 35 MiB of generated models resident for nothing.
# The operator talks to the API server through kubepim.k8s (aiohttp); keep the client out.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

from .main import main  # noqa: E402

main()
