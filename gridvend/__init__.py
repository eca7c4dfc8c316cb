"""gridvend: prepaid smart-meter head-end and vending (composition root)."""

__version__ = "0.1.0"
