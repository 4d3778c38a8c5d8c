"""`python -m tagcap ...`: the CLI, for launchers that start a module (torchrun -m tagcap extract ...)."""

import sys

from tagcap.cli import main

sys.exit(main())
