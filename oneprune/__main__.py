"""`python -m oneprune`: one training run from the command line (`oneprune.cli`), the same
command as `oneprune-train`."""

from oneprune.cli import main

raise SystemExit(main())
