"""The only code that touches the kernel: thin wrappers over pyroute2 and nft.

Nothing here knows about CNI or CNM.
"""
