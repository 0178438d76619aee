"""``python -m meddet`` (and ``torchrun -m meddet``) runs the command-line program."""

from meddet.cli import main

main()
