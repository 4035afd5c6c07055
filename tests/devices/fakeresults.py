"""Stand-ins for a device's result, for report and fleet tests that run no device.

They carry only what :class:`devices.report.FleetReport` and the fleet engine read
from a :class:`devices.device.DeviceResult` (outcome, reason, protocol, timed steps,
message counts and delivery latencies), so a test can build any mix of results.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FakeStep:
    """One timed step of a device's connection (seconds)."""

    name: str
    t_start: float
    duration: float
    ok: bool = True


@dataclass
class FakeResult:
    """A device's result: outcome and reason, steps, counts and latencies."""

    outcome: str
    reason: str
    protocol: str = "mqtt"
    steps: list[FakeStep] = field(default_factory=list)
    messages_sent: int = 0
    messages_received: int = 0
    delivery_latencies: list[float] = field(default_factory=list)
