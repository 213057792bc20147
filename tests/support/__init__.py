"""The tests' shared helpers, one module per concern: common (names, plugin execs, pins),
bridge (the bridge Lab), ports (published-port traffic), bundle (installed bundles)."""
