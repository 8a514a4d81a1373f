"""``python -m videoapp`` is the CLI (so ``torchrun -m videoapp ...`` works)."""
from videoapp.cli import main

raise SystemExit(main())
