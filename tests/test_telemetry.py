"""Telemetry sources on fakes (a pynvml / amdsmi module put in sys.modules, nvidia-smi / rocm-smi
as scripts on PATH) and the warnings `assess` draws from two samples."""
from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest

from fake_tools import write_tool
from fmha_bench import telemetry
from fmha_bench.telemetry import assess, open_telemetry, same_bus

BUS = "0000:1B:00.0"
NVIDIA = SimpleNamespace(backend="cuda", pci_bus_id=BUS)
AMD = SimpleNamespace(backend="hip", pci_bus_id="0000:c1:00.0")


@pytest.fixture
def no_tools(monkeypatch, tmp_path):
    """No management library or tool anywhere; returns the directory put first on PATH."""
    for module in ("pynvml", "amdsmi"):
        monkeypatch.setitem(sys.modules, module, None)   # import fails
    monkeypatch.setattr(telemetry, "TOOL_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- NVML
class _NVMLError(Exception):
    pass


def fake_nvml(bus_ids=("00000000:1B:00.0",), power_mw=350_000, reasons=0x1 | 0x4 | 0x40, unsupported=()):
    """A pynvml stand-in knowing the GPUs at `bus_ids`; functions named in `unsupported` raise."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = _NVMLError
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0
    nvml.calls = []

    def api(name, result):
        def call(*args):
            nvml.calls.append(name)
            if name in unsupported:
                raise _NVMLError("Not Supported")
            return result(*args) if callable(result) else result
        setattr(nvml, name, call)

    def handle(bus_id):
        if not any(same_bus(bus_id, known) for known in bus_ids):
            raise _NVMLError("Not Found")
        return ("handle", bus_id)

    api("nvmlInit", None)
    api("nvmlShutdown", None)
    api("nvmlDeviceGetHandleByPciBusId", handle)
    api("nvmlDeviceGetClockInfo", lambda h, clock: {1: 1980, 2: 2619}[clock])
    api("nvmlDeviceGetMaxClockInfo", lambda h, clock: 1980)
    api("nvmlDeviceGetTemperature", 41)
    api("nvmlDeviceGetPowerUsage", power_mw)
    api("nvmlDeviceGetEnforcedPowerLimit", 700_000)
    api("nvmlDeviceGetCurrentClocksEventReasons", reasons)
    return nvml


def test_nvml_sample_reads_the_gpu_matched_by_bus_id_in_watts_with_named_throttle_reasons(no_tools, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    source = open_telemetry(NVIDIA)
    sample = source.sample()
    assert sample == {"sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "max_sm_clock_mhz": 1980, "temperature_c": 41,
                      "temperature_sensor": "gpu", "power_w": 350.0, "power_limit_w": 700.0,
                      "throttle": ["sw_power_cap", "hw_thermal_slowdown"], "source": "nvml"}   # idle (0x1) left out


def test_nvml_value_the_gpu_does_not_report_is_none_and_the_rest_still_read(no_tools, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(unsupported=("nvmlDeviceGetPowerUsage",
                                                                      "nvmlDeviceGetCurrentClocksEventReasons")))
    sample = open_telemetry(NVIDIA).sample()
    assert sample["power_w"] is None and sample["throttle"] is None and sample["sm_clock_mhz"] == 1980


def test_nvml_closes_the_library(no_tools, monkeypatch):
    nvml = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    open_telemetry(NVIDIA).close()
    assert nvml.calls[0] == "nvmlInit" and nvml.calls[-1] == "nvmlShutdown"


# ----------------------------------------------------------------------------- nvidia-smi
def fake_nvidia_smi(directory, bus_id=BUS, row="1755, 2619, 1980, 86, 690.5, 700.00, 0x0000000000000005",
                    old_driver=False, sleep_s=0.0):
    """nvidia-smi answering --query-gpu for the GPU at `bus_id` (an old driver knows only the
    clocks_throttle_reasons name); every argv is appended to directory/argv.jsonl."""
    return write_tool(directory, "nvidia-smi", f"""
        import json, sys, time
        with open({str(directory / "argv.jsonl")!r}, "a") as log:
            log.write(json.dumps(sys.argv[1:]) + "\\n")
        time.sleep({sleep_s})
        args = sys.argv[1:]
        if args[args.index("-i") + 1].lower() != {bus_id.lower()!r}:
            print("No devices were found"); sys.exit(6)
        if {old_driver} and "clocks_event_reasons.active" in args[0]:
            print('Field "clocks_event_reasons.active" is not a valid field to query.'); sys.exit(2)
        print({row!r})
    """)


def test_nvidia_smi_answers_when_nvml_is_missing(no_tools):
    fake_nvidia_smi(no_tools)
    reasons = []
    source = open_telemetry(NVIDIA, reasons)
    assert source.sample() == {"sm_clock_mhz": 1755.0, "mem_clock_mhz": 2619.0, "max_sm_clock_mhz": 1980.0,
                               "temperature_c": 86.0, "temperature_sensor": "gpu", "power_w": 690.5,
                               "power_limit_w": 700.0, "throttle": ["sw_power_cap"], "source": "nvidia-smi"}
    assert reasons == ["NVML: nvidia-ml-py is not installed"]
    argv = json.loads((no_tools / "argv.jsonl").read_text().splitlines()[-1])
    assert argv[1:] == ["--format=csv,noheader,nounits", "-i", BUS]   # the GPU by bus id, not by index


def test_nvidia_smi_answers_when_nvml_does_not_know_the_bus_id(no_tools, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(bus_ids=("00000000:2C:00.0",)))
    fake_nvidia_smi(no_tools)
    reasons = []
    assert open_telemetry(NVIDIA, reasons).source == "nvidia-smi"
    assert reasons[0].startswith(f"NVML: no GPU at PCI bus id {BUS}")


def test_nvidia_smi_of_an_old_driver_is_asked_for_the_old_reasons_field(no_tools):
    fake_nvidia_smi(no_tools, old_driver=True)
    assert open_telemetry(NVIDIA).sample()["throttle"] == ["sw_power_cap"]
    assert "clocks_throttle_reasons.active" in json.loads((no_tools / "argv.jsonl").read_text().splitlines()[-1])[0]


def test_nvidia_smi_not_applicable_values_are_none(no_tools):
    fake_nvidia_smi(no_tools, row="1980, 2619, 1980, 40, [N/A], [Not Supported], 0x0000000000000001")
    sample = open_telemetry(NVIDIA).sample()
    assert sample["power_w"] is None and sample["power_limit_w"] is None and sample["throttle"] == []


def test_a_hung_nvidia_smi_is_given_up_on_after_the_timeout(no_tools, monkeypatch):
    monkeypatch.setattr(telemetry, "SMI_TIMEOUT_S", 0.3)
    fake_nvidia_smi(no_tools, sleep_s=5)
    reasons = []
    assert open_telemetry(NVIDIA, reasons) is None
    assert "nvidia-smi: no answer in 0.3 s" in reasons[-1]


def test_a_failing_sample_is_a_sample_with_the_error(no_tools):
    fake_nvidia_smi(no_tools)
    source = open_telemetry(NVIDIA)
    source.bus_id = "0000:99:00.0"   # the GPU went away
    sample = source.sample()
    assert sample["sm_clock_mhz"] is None and "No devices were found" in sample["error"]


# ----------------------------------------------------------------------------- nothing there
def test_no_source_at_all_is_none_with_every_reason(no_tools):
    reasons = []
    assert open_telemetry(NVIDIA, reasons) is None
    assert reasons == ["NVML: nvidia-ml-py is not installed", "nvidia-smi: not found on PATH"]


def test_a_device_without_bus_id_or_of_another_backend_has_no_telemetry(no_tools):
    reasons = []
    assert open_telemetry(SimpleNamespace(backend="cuda", pci_bus_id=""), reasons) is None
    assert open_telemetry(SimpleNamespace(backend="fake", pci_bus_id=BUS), reasons) is None
    assert reasons == ["the backend did not report the GPU's PCI bus id", "no telemetry source for the fake backend"]


# ----------------------------------------------------------------------------- AMD
class _AmdSmiException(Exception):
    pass


def fake_amdsmi(old=False):
    amd = types.ModuleType("amdsmi")
    amd.AmdSmiException = _AmdSmiException
    amd.AmdSmiClkType = SimpleNamespace(GFX="gfx", MEM="mem")
    amd.AmdSmiTemperatureType = SimpleNamespace(EDGE="edge", HOTSPOT="hotspot")
    amd.AmdSmiTemperatureMetric = SimpleNamespace(CURRENT="current")
    amd.amdsmi_init = amd.amdsmi_shut_down = lambda: None
    amd.amdsmi_get_processor_handles = lambda: ["gpu0", "gpu1"]
    amd.amdsmi_get_gpu_device_bdf = {"gpu0": "0000:c0:00.0", "gpu1": "0000:C1:00.0"}.get
    clock = "cur_clk" if old else "clk"
    amd.amdsmi_get_clock_info = lambda h, kind: {clock: {"gfx": 2100, "mem": 1300}[kind] + (h == "gpu0"),
                                                 "max_clk": 2100}

    def temperature(h, sensor, metric):
        if sensor == "edge":
            raise _AmdSmiException("AMDSMI_STATUS_NOT_SUPPORTED")   # MI300 has no edge sensor
        return 71
    amd.amdsmi_get_temp_metric = temperature
    amd.amdsmi_get_power_info = lambda h: {"current_socket_power": "N/A", "average_socket_power": 610}
    amd.amdsmi_get_power_cap_info = lambda h: {"power_cap": 750_000_000}
    return amd


@pytest.mark.parametrize("old", [False, True])
def test_amdsmi_sample_reads_the_gpu_matched_by_bus_id(no_tools, monkeypatch, old):
    monkeypatch.setitem(sys.modules, "amdsmi", fake_amdsmi(old))
    assert open_telemetry(AMD).sample() == {
        "sm_clock_mhz": 2100.0, "mem_clock_mhz": 1300.0, "max_sm_clock_mhz": 2100.0, "temperature_c": 71.0,
        "temperature_sensor": "junction", "power_w": 610.0, "power_limit_w": 750.0, "throttle": None,
        "source": "amdsmi"}


ROCM_SMI_JSON = {
    "card0": {"PCI Bus": "0000:C0:00.0", "Temperature (Sensor junction) (C)": "40.0", "sclk clock speed:": "(100Mhz)"},
    "card1": {"PCI Bus": "0000:C1:00.0", "Temperature (Sensor edge) (C)": "35.0",
              "Temperature (Sensor junction) (C)": "52.0", "Current Socket Graphics Package Power (W)": "402.0",
              "Max Graphics Package Power (W)": "750.0", "sclk clock level:": "1", "sclk clock speed:": "(1900Mhz)",
              "mclk clock level:": "3", "mclk clock speed:": "(1300Mhz)"},
}


def test_rocm_smi_answers_for_the_card_at_the_bus_id_when_amdsmi_is_missing(no_tools):
    write_tool(no_tools, "rocm-smi", f"""
        print("======= ROCm System Management Interface =======")
        print({json.dumps(ROCM_SMI_JSON)!r})
    """)
    reasons = []
    assert open_telemetry(AMD, reasons).sample() == {
        "sm_clock_mhz": 1900.0, "mem_clock_mhz": 1300.0, "max_sm_clock_mhz": None, "temperature_c": 35.0,
        "temperature_sensor": "edge", "power_w": 402.0, "power_limit_w": 750.0, "throttle": None,
        "source": "rocm-smi"}
    assert reasons == ["amdsmi: the Python module is not installed"]


def test_rocm_smi_without_the_gpu_is_passed_over(no_tools):
    write_tool(no_tools, "rocm-smi", f"print({json.dumps({'card0': ROCM_SMI_JSON['card0']})!r})")
    reasons = []
    assert open_telemetry(AMD, reasons) is None
    assert reasons[-1] == "rocm-smi: no GPU at PCI bus id 0000:c1:00.0"


# ----------------------------------------------------------------------------- assess
CALM = {"sm_clock_mhz": 1980, "temperature_c": 45, "temperature_sensor": "gpu", "power_w": 300.0,
        "power_limit_w": 700.0, "throttle": []}


def test_a_calm_point_has_no_warnings():
    assert assess(CALM, dict(CALM, sm_clock_mhz=1800)) == []   # a 9% dip is within the bound
    assert assess(None, None) == []


def test_throttle_reasons_are_named_with_when_they_were_active():
    warnings = assess(dict(CALM, throttle=["sync_boost"]), dict(CALM, throttle=["sw_power_cap", "hw_slowdown"]))
    assert warnings == ["GPU clocks throttled (before: sync_boost; after: sw_power_cap, hw_slowdown)"]


def test_an_sm_clock_drop_below_ninety_percent_is_a_warning():
    assert assess(CALM, dict(CALM, sm_clock_mhz=1700)) == ["SM clock fell from 1980 to 1700 MHz during the point"]


def test_a_hot_gpu_is_a_warning_with_the_sensor_bound():
    assert assess(CALM, dict(CALM, temperature_c=86)) == ["GPU temperature 86 C (>= 85 C: near thermal slowdown)"]
    junction = dict(CALM, temperature_sensor="junction")
    assert assess(junction, dict(junction, temperature_c=95)) == []   # hotspot sensors run hotter
    assert assess(junction, dict(junction, temperature_c=101)) == [
        "GPU junction temperature 101 C (>= 100 C: near thermal slowdown)"]


def test_power_at_the_limit_is_a_warning():
    assert assess(CALM, dict(CALM, power_w=690.0)) == ["power 690 W after the point, 99% of the 700 W limit"]


@pytest.mark.parametrize("a,b,same", [("0000:1b:00.0", "00000000:1B:00.0", True), ("1b:00.0", "0000:1B:00.0", True),
                                      ("0000:1b:00.0", "0000:1c:00.0", False), ("", "", False),
                                      ("0001:1b:00.0", "0000:1b:00.0", False)])
def test_pci_bus_ids_compare_whatever_the_domain_width_and_case(a, b, same):
    assert same_bus(a, b) is same
