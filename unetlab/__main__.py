"""``python -m unetlab`` runs the command-line interface (see ``unetlab.cli``)."""
import sys

from unetlab.cli import main

sys.exit(main())
