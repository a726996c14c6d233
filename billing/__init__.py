"""Usage metering, pricing, spend caps, credits and plans."""
