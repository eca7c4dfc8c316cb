"""Sans-IO protocol code: STS tokens, the Modbus register map, MQTT topics and payloads."""
