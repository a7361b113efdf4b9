"""`python -m fmha_bench` = the `fmha-bench` command."""
from .cli import main

if __name__ == "__main__":  # not when a sweep worker process imports this module
    main()
