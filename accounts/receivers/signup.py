"""After an allauth signup: accept the pending invite, or give the new user an org."""
