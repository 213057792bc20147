"""cnm-cni: CNI plugins whose insides are Docker's Container Network Model."""

__version__ = "0.1.0"
