"""Modbus poller: scheduled and on-demand reads of meters over Modbus TCP and RTU.

The public API of the poller; the parts live in :mod:`headend.connectors.modbus_poll`.
Start it with ``await ModbusPoller(...).run(stop_event)``; build its targets from
registry rows with :func:`target_from_registry`. docs/modbus-polling.md explains the
scheduling, concurrency, retries, circuit breaker, leases and failure reasons.
"""

from headend.connectors.modbus_poll.failures import FailureReason, PollFailure
from headend.connectors.modbus_poll.leases import (
    channel_resource,
    claim_leases,
    lease_holders,
    meter_resource,
    release_leases,
)
from headend.connectors.modbus_poll.policy import BreakerState, CircuitBreaker, RetryPolicy
from headend.connectors.modbus_poll.poller import (
    ChannelBusyError,
    ModbusPoller,
    PassReport,
    PollerConfig,
    UnknownMeterError,
)
from headend.connectors.modbus_poll.recorder import PollResult
from headend.connectors.modbus_poll.schedule import (
    DEFAULT_GROUPS,
    ENERGY_GROUP,
    INSTANTANEOUS_GROUP,
    PollClock,
    PollGroup,
    ScaledClock,
    SystemClock,
    group_points,
    interval_start,
)
from headend.connectors.modbus_poll.targets import (
    REGISTRY_FIELDS,
    PollTarget,
    RtuTransport,
    TargetError,
    TcpTransport,
    target_from_registry,
    targets_from_registry,
)

__all__ = [
    "DEFAULT_GROUPS",
    "ENERGY_GROUP",
    "INSTANTANEOUS_GROUP",
    "REGISTRY_FIELDS",
    "BreakerState",
    "ChannelBusyError",
    "CircuitBreaker",
    "FailureReason",
    "ModbusPoller",
    "PassReport",
    "PollClock",
    "PollFailure",
    "PollGroup",
    "PollResult",
    "PollTarget",
    "PollerConfig",
    "RetryPolicy",
    "RtuTransport",
    "ScaledClock",
    "SystemClock",
    "TargetError",
    "TcpTransport",
    "UnknownMeterError",
    "channel_resource",
    "claim_leases",
    "group_points",
    "interval_start",
    "lease_holders",
    "meter_resource",
    "release_leases",
    "target_from_registry",
    "targets_from_registry",
]
