"""Writes of `billing`: usage metering, caps, credits, plans and payments."""
