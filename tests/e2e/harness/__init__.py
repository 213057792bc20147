"""The one e2e harness every test in tests/e2e uses.

host        commands in a netns, the runtimes' environment, mounts, processes, HTTP probes
conflists   shipped lists made private to a test, and the plain bridge list
image       the busybox image (rootfs tar for podman, OCI archive for containerd)
node        Node: a simulated node (its netns, CNI dirs, CNM store) and what its kernel says
containerd  Containerd: a private containerd 1.6, CRI on (for a Node) or off (ctr)
kubelet     Kubelet: pods on a Node through containerd's CRI, as the kubelet asks
cri_client  the CRI (runtime.v1) gRPC client the Kubelet speaks
"""
