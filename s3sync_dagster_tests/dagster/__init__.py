"""Through Dagster: definitions, sensors, queues, the daemon, audit and plan, re-embedding, repair, invocations, the instance, the component and the UI."""
