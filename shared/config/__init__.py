"""What the app is told: typed settings and the host.json reader, each defined once."""
