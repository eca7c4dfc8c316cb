"""The bank and mobile-money channel API: signed, idempotent purchases, advices, reconciliation."""

from vending.channels.api import make_admin_router, make_router
from vending.channels.service import ChannelError, NewChannelTerms, create_channel

__all__ = ["ChannelError", "NewChannelTerms", "create_channel", "make_admin_router", "make_router"]
