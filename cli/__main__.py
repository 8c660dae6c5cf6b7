"""``python -m tvreg.cli`` runs the ``tvreg`` command."""

from .main import main

main()
