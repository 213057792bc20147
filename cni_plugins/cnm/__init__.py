"""The Container Network Model: Network, Sandbox, Endpoint, and the store that records them."""
