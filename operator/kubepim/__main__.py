"""``python -m kubepim`` runs the operator."""

from .main import main

main()
