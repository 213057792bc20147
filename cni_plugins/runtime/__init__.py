"""The runtime side of CNI: a runner with libcni's semantics.

conf      load .conflist / legacy .conf files, select the spec version
cache     libcni's result cache (cniCacheV1) under <cacheDir>/results/
invoke    find a plugin on CNI_PATH, exec it with the CNI_* env, decode its answer
libcni    the runner: ADD/DEL/CHECK/GC/STATUS/VERSION over a network list
liveness  is a cached attachment's netns provably gone?
collect   GC of one network without the runtime's list: DEL only what is provably gone

Used by cnmctl and the tests; plugins never import it.
"""

from .conf import NetworkConfigList, load_conflist, conflist_from_bytes, conflist_from_file
from .errors import ConfigError, NotFoundError, PluginError, RunnerError
from .libcni import CNIRunner, RuntimeConf

__all__ = [
    "CNIRunner",
    "ConfigError",
    "NetworkConfigList",
    "NotFoundError",
    "PluginError",
    "RunnerError",
    "RuntimeConf",
    "conflist_from_bytes",
    "conflist_from_file",
    "load_conflist",
]
