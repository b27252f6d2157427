"""Who may touch what, and what survives: claims, tenancy, a shared store, hostile neighbours, fail-closed access, two writers, failures and faults, the reliability table."""
