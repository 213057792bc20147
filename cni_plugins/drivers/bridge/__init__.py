"""The CNM bridge driver (Docker's --net=bridge): a Linux bridge per network, a veth
pair per endpoint, IPAM (in-process cnm-ipam or any delegated IPAM), gateway, NAT.

Modules: config (keys, defaults, validation), ipam (IPAM calls and what DEL needs
of them), ports (published ports: parsing, conflicts, nft elements), driver
(create/join/leave/delete of an endpoint), check (CHECK against record and kernel).
"""

from .driver import BridgeDriver

__all__ = ["BridgeDriver"]
