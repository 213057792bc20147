"""IP address management: the host-local compatible allocator (cnm-ipam) and delegation."""
