"""``python -m pocsdk`` runs the CLI."""

from pocsdk.cli import main

main()
