"""Every package's table metadata, for migrations."""

from __future__ import annotations

from sqlalchemy import MetaData

import headend.commands.models
import headend.connectors.modbus_models  # noqa: F401 - registers the polling tables
import vending.channels.models
import vending.models_balance  # registers the operator review table
import vending.models_counter  # registers the counter tables
import vending.models_keychange  # registers the key change table
import vending.models_management  # noqa: F401 - registers the management token table
from gridvend.audit import Base as AuditBase
from gridvend.auth import Base as AuthBase
from headend.models import Base as HeadendBase
from vending.models import Base as VendingBase


def metadata_targets() -> list[MetaData]:
    return [HeadendBase.metadata, AuthBase.metadata, AuditBase.metadata, VendingBase.metadata]
