"""Security events from failed logins and permission denials."""
