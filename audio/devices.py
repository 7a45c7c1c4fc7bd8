"""Sound devices by name (indices shift after a replug; names do not)."""

from __future__ import annotations

from dataclasses import dataclass


class DeviceError(RuntimeError):
    """A sound device that cannot be found or opened. The message names it and what it can do."""


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_rate_hz: float
    is_default_input: bool
    is_default_output: bool


def _sd():
    try:
        import sounddevice
    except OSError as e:  # PortAudio itself is missing
        raise DeviceError(f"PortAudio is not available ({e}); install the Debian package libportaudio2") from None
    return sounddevice


def list_devices() -> list[Device]:
    sd = _sd()
    try:
        raw = sd.query_devices()
        apis = sd.query_hostapis()
        default_in, default_out = sd.default.device
    except sd.PortAudioError as e:
        raise DeviceError(f"cannot list sound devices: {e}") from None
    return [
        Device(
            index=i,
            name=d["name"],
            host_api=apis[d["hostapi"]]["name"],
            max_input_channels=d["max_input_channels"],
            max_output_channels=d["max_output_channels"],
            default_rate_hz=d["default_samplerate"],
            is_default_input=i == default_in,
            is_default_output=i == default_out,
        )
        for i, d in enumerate(raw)
    ]


def find_device(name_part: str, *, is_input: bool) -> Device:
    """The device whose name contains name_part (case-insensitive); "" means the system default."""
    kind = "input" if is_input else "output"
    devices = [d for d in list_devices() if (d.max_input_channels if is_input else d.max_output_channels) > 0]
    if not devices:
        raise DeviceError(f"no {kind} sound device exists")
    if not name_part:
        for d in devices:
            if d.is_default_input if is_input else d.is_default_output:
                return d
        named_default = [d for d in devices if d.name in ("default", "pulse", "pipewire")]
        return (named_default or devices)[0]
    matches = [d for d in devices if name_part.lower() in d.name.lower()]
    if not matches:
        names = ", ".join(repr(d.name) for d in devices)
        raise DeviceError(f"no {kind} device named like {name_part!r}; {kind} devices: {names}")
    exact = [d for d in matches if d.name.lower() == name_part.lower()]
    return (exact or matches)[0]
