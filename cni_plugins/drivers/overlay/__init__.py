"""cnm-overlay: a VXLAN overlay across nodes, one subnet lease per node in etcd.

etcd.py (the store's client), lease.py (the subnet leases), state.py (this node's lease on
disk), mesh.py (lease + VXLAN device + mesh, converged), config.py, driver.py. The package
imports nothing itself: the etcd client stays light for whoever needs only it.
"""
