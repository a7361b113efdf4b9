"""The Backend methods that the tests' fake backends (fake_backend.ClockBackend,
emulated_backend.EmulatedBackend, test_fmha_provider.RecordingBackend) have no use for, as
no-ops in one place, so that each fake spells out only what it models."""
from __future__ import annotations

from fmha_bench.backends.base import Backend


class StubBackend(Backend):
    """Code loading, synchronisation and events that do nothing: a module is its image, a
    function is its name, and every event interval is 0 s. Subclasses give the device, the
    memory and the launch (and override any of these they model)."""

    def load_module(self, image):
        return image

    def get_function(self, module, name):
        return name

    def set_dynamic_shared(self, function, nbytes):
        pass

    def synchronize(self):
        pass

    def create_event(self):
        return object()

    def record_event(self, event, stream=None):
        pass

    def elapsed_s(self, start, end):
        return 0.0

    def destroy_event(self, event):
        pass
