"""`python -m ftgrid COMMAND ...` is the `ftgrid` console command."""
import sys

from ftgrid.cli import main

sys.exit(main())
