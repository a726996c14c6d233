"""Job handler: deleting an organisation and all its data."""
