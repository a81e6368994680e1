"""``python -m storagebench.cli``: the ``storagebench`` command."""

from storagebench.cli import main

main(prog_name="storagebench")
