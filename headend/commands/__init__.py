"""The head-end command queue: commands to meters, persisted, retried and confirmed.

Other packages use only what is exported here: ``CommandQueue.request`` to ask for a
command and ``CommandQueue.status`` to follow it. The composition root runs a
``CommandDispatcher`` and mounts ``headend.commands.api.make_router``.
"""

from headend.commands.models import CommandState, CommandStep, Confirmation
from headend.commands.policy import RetryPolicy
from headend.commands.service import CommandQueue, CommandStatus, KnownControlState
from headend.commands.spec import CommandError

__all__ = [
    "CommandError",
    "CommandQueue",
    "CommandState",
    "CommandStatus",
    "CommandStep",
    "Confirmation",
    "KnownControlState",
    "RetryPolicy",
]
