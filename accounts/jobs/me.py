"""Job handler: the GDPR export of a user's data."""
