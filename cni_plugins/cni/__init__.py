"""The CNI protocol: env + stdin parsing, versions, results, errors, dispatch.

Nothing in this package touches the kernel. Modules imported on the entry
path (errors, versions, request, args, dispatch) use the stdlib only.
"""
