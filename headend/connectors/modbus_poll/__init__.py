"""The Modbus poller's parts; the public API is re-exported by ``headend.connectors.modbus``."""
