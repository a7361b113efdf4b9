"""GPU clocks, temperature and power sampled around a timed point, and the warnings they call for.

A sample is a dict (stored in the row's `telemetry` as {"before": ..., "after": ...}):
sm_clock_mhz, mem_clock_mhz, max_sm_clock_mhz, temperature_c, temperature_sensor (gpu | edge |
junction), power_w, power_limit_w, throttle (the active reasons that slow a benchmark, [] when
none, None when the source does not say), source; a value the GPU does not report is None, and a
sample that failed as a whole also has `error`.

Sources, the first that answers for the GPU: NVIDIA: NVML through nvidia-ml-py (a sample is a
handful of driver calls, well under a millisecond), else `nvidia-smi` (a process per sample,
tens to hundreds of ms: fine around a point, too slow inside a loop); AMD: the amdsmi Python module, else
`rocm-smi --json` (a process per sample, ~0.5 s). The GPU is found by PCI bus id
(`DeviceInfo.pci_bus_id`): the backend's ordinal counts only the GPUs *_VISIBLE_DEVICES lets
through, the management libraries count them all. The AMD sources never ran on AMD hardware.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from abc import ABC, abstractmethod

# NVML clock event reasons (nvml.h, nvmlClocksEventReason* / nvmlClocksThrottleReason*) that
# slow a benchmark. Left out: GPU idle (0x1, the state between points), applications clocks
# setting (0x2, a clock the operator chose) and display clock setting (0x100).
THROTTLE_REASONS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
                    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown", 0x200: "board_limit",
                    0x400: "reliability"}
TEMPERATURE_WARN_C = {"gpu": 85.0, "edge": 85.0, "junction": 100.0}
"""At or above this a GPU is close to thermal slowdown: NVIDIA data-centre GPUs start slowing
near 90 C (NVML's slowdown threshold); AMD's junction (hotspot) sensor reads ~15-20 C above the
edge sensor, so it gets its own bound (a guess, not checked on AMD hardware)."""
CLOCK_DROP_FRACTION = 0.90   # an SM clock after the point below this fraction of the one before: it dropped
POWER_LIMIT_FRACTION = 0.98  # power at or above this fraction of the limit: the power cap is (about to be) active
SMI_TIMEOUT_S = 5.0          # a management tool that takes longer is hung (first calls may init the driver)
TOOL_DIRS = ("/usr/local/nvidia/bin", "/opt/rocm/bin")   # where containers put the tools when PATH lacks them
NVIDIA_SMI_REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")  # new name, old name
ROCM_SMI_ARGS = ("--showbus", "--showtemp", "--showpower", "--showmaxpower", "--showclocks", "--json")


class TelemetryError(RuntimeError):
    """A source that cannot report on this GPU (not installed, no such GPU, tool failed)."""


class Telemetry(ABC):
    source: str = ""

    @abstractmethod
    def sample(self) -> dict:
        """One reading now; never raises (a failed reading is a sample with `error`)."""

    def close(self) -> None:
        """Release the library (optional)."""


def open_telemetry(device, reasons: list | None = None) -> Telemetry | None:
    """A telemetry source for `device` (a DeviceInfo), or None when no source answers for it;
    `reasons`, when given, receives why each source was passed over (for the row's record)."""
    reasons = [] if reasons is None else reasons
    if not device.pci_bus_id:
        reasons.append("the backend did not report the GPU's PCI bus id")
        return None
    openers = {"cuda": (_open_nvml, _open_nvidia_smi), "hip": (_open_amdsmi, _open_rocm_smi)}.get(device.backend)
    if openers is None:
        reasons.append(f"no telemetry source for the {device.backend} backend")
        return None
    for opener in openers:
        try:
            return opener(device.pci_bus_id)
        except TelemetryError as e:
            reasons.append(str(e))
    return None


def assess(before: dict | None, after: dict | None) -> list[str]:
    """Warnings for a point from the samples taken before and after it (either may be None)."""
    samples = [(when, s) for when, s in (("before", before), ("after", after)) if s]
    warnings = []
    throttled = [f"{when}: {', '.join(s['throttle'])}" for when, s in samples if s.get("throttle")]
    if throttled:
        warnings.append(f"GPU clocks throttled ({'; '.join(throttled)})")
    clock_before, clock_after = (before or {}).get("sm_clock_mhz"), (after or {}).get("sm_clock_mhz")
    if clock_before and clock_after is not None and clock_after < CLOCK_DROP_FRACTION * clock_before:
        warnings.append(f"SM clock fell from {clock_before:.0f} to {clock_after:.0f} MHz during the point")
    hot = []
    for _, s in samples:
        sensor = s.get("temperature_sensor") or "gpu"
        bound = TEMPERATURE_WARN_C.get(sensor, TEMPERATURE_WARN_C["gpu"])
        if s.get("temperature_c") is not None and s["temperature_c"] >= bound:
            hot.append((s["temperature_c"], sensor, bound))
    if hot:
        temperature, sensor, bound = max(hot)
        which = "" if sensor == "gpu" else f"{sensor} "
        warnings.append(f"GPU {which}temperature {temperature:.0f} C (>= {bound:.0f} C: near thermal slowdown)")
    for when, s in samples:
        power, limit = s.get("power_w"), s.get("power_limit_w")
        if power is not None and limit and power >= POWER_LIMIT_FRACTION * limit:
            warnings.append(f"power {power:.0f} W {when} the point, {power / limit:.0%} of the {limit:.0f} W limit")
    return warnings


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


# ----------------------------------------------------------------------------- NVIDIA
class NvmlTelemetry(Telemetry):
    source = "nvml"

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle
        # Recent nvidia-ml-py names them "event reasons", older releases only "throttle reasons".
        self._reasons = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                         or nvml.nvmlDeviceGetCurrentClocksThrottleReasons)

    def _read(self, function, *args):
        try:
            return function(*args)
        except self.nvml.NVMLError:  # NOT_SUPPORTED on this GPU, or a transient failure: that value is unknown
            return None

    def sample(self) -> dict:
        n, h = self.nvml, self.handle
        power_mw = self._read(n.nvmlDeviceGetPowerUsage, h)
        limit_mw = self._read(n.nvmlDeviceGetEnforcedPowerLimit, h)
        reasons = self._read(self._reasons, h)
        return {
            "sm_clock_mhz": self._read(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM),
            "mem_clock_mhz": self._read(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM),
            "max_sm_clock_mhz": self._read(n.nvmlDeviceGetMaxClockInfo, h, n.NVML_CLOCK_SM),
            "temperature_c": self._read(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
            "temperature_sensor": "gpu",
            "power_w": None if power_mw is None else power_mw / 1000.0,
            "power_limit_w": None if limit_mw is None else limit_mw / 1000.0,
            "throttle": None if reasons is None else throttle_names(int(reasons)),
            "source": self.source,
        }

    def close(self) -> None:
        self._read(self.nvml.nvmlShutdown)


def _open_nvml(bus_id: str) -> Telemetry:
    try:
        import pynvml
    except ImportError:
        raise TelemetryError("NVML: nvidia-ml-py is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise TelemetryError(f"NVML: {e}") from None
    try:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    except pynvml.NVMLError as e:
        pynvml.nvmlShutdown()
        raise TelemetryError(f"NVML: no GPU at PCI bus id {bus_id}: {e}") from None
    return NvmlTelemetry(pynvml, handle)


class NvidiaSmiTelemetry(Telemetry):
    source = "nvidia-smi"
    FIELDS = ("clocks.sm", "clocks.mem", "clocks.max.sm", "temperature.gpu", "power.draw", "power.limit")

    def __init__(self, executable: str, bus_id: str):
        self.executable, self.bus_id = executable, bus_id
        errors = []
        for field in NVIDIA_SMI_REASON_FIELDS:   # a driver knows one of the names of the reasons field
            self.reason_field = field
            try:
                self._query()
                return
            except TelemetryError as e:
                errors.append(str(e))
        raise TelemetryError("; ".join(errors))

    def _query(self) -> list[str]:
        fields = ",".join((*self.FIELDS, self.reason_field))
        out = _run_tool([self.executable, f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", self.bus_id])
        values = [v.strip() for v in out.strip().split(",")]
        if len(values) != len(self.FIELDS) + 1:
            raise TelemetryError(f"nvidia-smi: expected {len(self.FIELDS) + 1} values, got {out.strip()[:200]!r}")
        return values

    def sample(self) -> dict:
        try:
            sm, mem, max_sm, temp, power, limit, reasons = self._query()
        except TelemetryError as e:
            return _failed_sample(self.source, str(e))
        mask = _number(reasons, base=16)
        return {"sm_clock_mhz": _number(sm), "mem_clock_mhz": _number(mem), "max_sm_clock_mhz": _number(max_sm),
                "temperature_c": _number(temp), "temperature_sensor": "gpu", "power_w": _number(power),
                "power_limit_w": _number(limit), "throttle": None if mask is None else throttle_names(int(mask)),
                "source": self.source}


def _open_nvidia_smi(bus_id: str) -> Telemetry:
    return NvidiaSmiTelemetry(_find_tool("nvidia-smi"), bus_id)


# ----------------------------------------------------------------------------- AMD
class AmdSmiTelemetry(Telemetry):
    source = "amdsmi"

    def __init__(self, amdsmi, handle):
        self.amdsmi, self.handle = amdsmi, handle

    def _read(self, function, *args):
        try:
            return function(*args)
        except self.amdsmi.AmdSmiException:
            return None

    def sample(self) -> dict:
        a, h = self.amdsmi, self.handle
        gfx = self._read(a.amdsmi_get_clock_info, h, a.AmdSmiClkType.GFX) or {}
        mem = self._read(a.amdsmi_get_clock_info, h, a.AmdSmiClkType.MEM) or {}
        power = self._read(a.amdsmi_get_power_info, h) or {}
        cap = self._read(a.amdsmi_get_power_cap_info, h) or {}
        metric = a.AmdSmiTemperatureMetric.CURRENT
        edge = _number(self._read(a.amdsmi_get_temp_metric, h, a.AmdSmiTemperatureType.EDGE, metric))
        junction = _number(self._read(a.amdsmi_get_temp_metric, h, a.AmdSmiTemperatureType.HOTSPOT, metric))
        cap_uw = _number(cap.get("power_cap"))
        return {
            # "clk" since amdsmi 6.2, "cur_clk" before
            "sm_clock_mhz": _first(_number(gfx.get("clk")), _number(gfx.get("cur_clk"))),
            "mem_clock_mhz": _first(_number(mem.get("clk")), _number(mem.get("cur_clk"))),
            "max_sm_clock_mhz": _number(gfx.get("max_clk")),
            "temperature_c": _first(edge, junction),
            "temperature_sensor": "edge" if edge is not None else "junction",
            # MI300 and later report current socket power, earlier GPUs an average
            "power_w": _first(_number(power.get("current_socket_power")), _number(power.get("average_socket_power"))),
            "power_limit_w": None if cap_uw is None else cap_uw / 1e6,
            "throttle": None,   # amdsmi reports throttling as per-ASIC bit fields (gpu_metrics): not decoded here
            "source": self.source,
        }

    def close(self) -> None:
        self._read(self.amdsmi.amdsmi_shut_down)


def _open_amdsmi(bus_id: str) -> Telemetry:
    try:
        import amdsmi
    except ImportError:
        raise TelemetryError("amdsmi: the Python module is not installed") from None
    try:
        amdsmi.amdsmi_init()
        for handle in amdsmi.amdsmi_get_processor_handles():
            if same_bus(amdsmi.amdsmi_get_gpu_device_bdf(handle), bus_id):
                return AmdSmiTelemetry(amdsmi, handle)
    except amdsmi.AmdSmiException as e:
        raise TelemetryError(f"amdsmi: {e}") from None
    amdsmi.amdsmi_shut_down()
    raise TelemetryError(f"amdsmi: no GPU at PCI bus id {bus_id}")


class RocmSmiTelemetry(Telemetry):
    source = "rocm-smi"

    def __init__(self, executable: str, bus_id: str):
        self.executable = executable
        cards = self._query()
        self.card = next((card for card, values in cards.items()
                          if isinstance(values, dict) and same_bus(str(values.get("PCI Bus", "")), bus_id)), None)
        if self.card is None:
            raise TelemetryError(f"rocm-smi: no GPU at PCI bus id {bus_id}")

    def _query(self) -> dict:
        out = _run_tool([self.executable, *ROCM_SMI_ARGS])
        try:
            return json.loads(out[out.index("{"):])   # older versions print a banner before the JSON
        except ValueError:
            raise TelemetryError(f"rocm-smi: no JSON in {out.strip()[:200]!r}") from None

    def sample(self) -> dict:
        try:
            card = self._query().get(self.card, {})
        except TelemetryError as e:
            return _failed_sample(self.source, str(e))
        junction, edge = _rocm_value(card, "^temperature", "junction"), _rocm_value(card, "^temperature", "edge")
        return {"sm_clock_mhz": _rocm_value(card, "^sclk", "speed"),
                "mem_clock_mhz": _rocm_value(card, "^mclk", "speed"), "max_sm_clock_mhz": None,
                "temperature_c": _first(edge, junction),
                "temperature_sensor": "edge" if edge is not None else "junction",
                "power_w": _rocm_value(card, r"power \(w\)", exclude="max"),
                "power_limit_w": _rocm_value(card, r"^max.*power \(w\)"), "throttle": None, "source": self.source}


def _rocm_value(card: dict, *patterns: str, exclude: str | None = None):
    """The first number of the first value whose key matches every pattern (rocm-smi's key names
    vary between ROCm releases, e.g. "Average Graphics Package Power (W)" or "Current Socket
    Graphics Package Power (W)"; clocks read "(1900Mhz)")."""
    for key, text in card.items():
        if all(re.search(p, key, re.I) for p in patterns) and not (exclude and re.search(exclude, key, re.I)):
            found = re.search(r"\d+(?:\.\d+)?", str(text))
            return float(found.group()) if found else None
    return None


def _open_rocm_smi(bus_id: str) -> Telemetry:
    return RocmSmiTelemetry(_find_tool("rocm-smi"), bus_id)


# ----------------------------------------------------------------------------- helpers
def same_bus(a: str, b: str) -> bool:
    """Whether two PCI addresses name one device, whatever the domain width or letter case
    (NVML writes 00000000:1B:00.0, CUDA 0000:1b:00.0)."""
    key_a, key_b = _bus_key(a), _bus_key(b)
    return key_a is not None and key_a == key_b


def _bus_key(text: str):
    match = re.fullmatch(r"\s*(?:([0-9a-f]+):)?([0-9a-f]+):([0-9a-f]+)\.([0-9a-f]+)\s*", text or "", re.I)
    if not match:
        return None
    domain, bus, device, function = match.groups()
    return int(domain or "0", 16), int(bus, 16), int(device, 16), int(function, 16)


def _number(text, base: int = 10):
    """A reading as a float (an int for base 16), None for N/A, [Not Supported] and the like."""
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return int(str(text).strip(), base) if base != 10 else float(str(text).strip())
    except ValueError:
        return None


def _first(*values):
    return next((v for v in values if v is not None), None)


def _failed_sample(source: str, error: str) -> dict:
    return {"sm_clock_mhz": None, "mem_clock_mhz": None, "max_sm_clock_mhz": None, "temperature_c": None,
            "temperature_sensor": None, "power_w": None, "power_limit_w": None, "throttle": None,
            "source": source, "error": error}


def _find_tool(name: str) -> str:
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *TOOL_DIRS]))
    if path is None:
        raise TelemetryError(f"{name}: not found on PATH")
    return path


def _run_tool(argv: list) -> str:
    """stdout of a management tool (an argv list, no shell), or TelemetryError with its complaint."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TelemetryError(f"{os.path.basename(argv[0])}: no answer in {SMI_TIMEOUT_S:g} s") from None
    except OSError as e:
        raise TelemetryError(f"{os.path.basename(argv[0])}: {e}") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise TelemetryError(f"{os.path.basename(argv[0])} exited {done.returncode}: {said[-1] if said else ''}")
    return done.stdout
