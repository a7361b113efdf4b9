"""`python -m fmha_bench` = the `fmha-bench` command."""
from .cli import main

main()
