"""Users, organisations (tenants), memberships and roles: the identity and tenancy layer."""
