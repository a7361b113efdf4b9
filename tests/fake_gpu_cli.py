"""`fmha-bench` with its sweep workers on the CPU stand-in GPU (fake_gpu.py), for tests that
drive the real command in a subprocess (Ctrl-C, SIGKILL, resume): python fake_gpu_cli.py ARGS."""
import dataclasses

from fake_gpu import FACTORIES

from fmha_bench.cli import main, parity_cmd, sweep_cmd

_real_options = sweep_cmd.sweep_options


def _on_fake_gpu(*args, **kwargs):
    return dataclasses.replace(_real_options(*args, **kwargs), worker_factories=FACTORIES)


sweep_cmd.sweep_options = parity_cmd.sweep_options = _on_fake_gpu

if __name__ == "__main__":
    main()
