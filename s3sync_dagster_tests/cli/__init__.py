"""The `s3sync` command: end to end, the demo, progress, commands at once, the errors it names, the config it reads, secrets it never echoes."""
