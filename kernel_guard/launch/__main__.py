"""``python -m kernel_guard.launch [options] -f {connection_file}``: the guarded kernel."""

from .launcher import main

main()
