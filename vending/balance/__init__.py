"""Central-balance prepaid: rating consumption into the ledger, alerts, emergency credit,
and the disconnect/reconnect policy."""
