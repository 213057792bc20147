"""cnm-bridge STATUS: can an ADD succeed now (50), are existing endpoints intact (51)."""

from __future__ import annotations

from ...cni.errors import NOT_AVAILABLE, CNIError
from ...cnm.model import Endpoint
from ...linux import netns


def needs_nft(conf, request) -> bool:
    """Would an ADD of this network program nftables: every option expected_elements turns
    into elements (published ports: the network takes portMappings from the runtime)."""
    capabilities = request.config.get("capabilities")
    ports = (isinstance(capabilities, dict) and capabilities.get("portMappings") is True) \
        or bool(request.runtime_config("portMappings"))
    return bool(conf.ipMasq or conf.macspoofchk or conf.isolateNetworks or not conf.icc or ports)


def require_nft(conf, request) -> None:
    """Code 50 when this network's ADD would program nftables and the backend cannot."""
    from ...linux.nft import backend

    if not needs_nft(conf, request):
        return
    problem = backend.current().problem()
    if problem is not None:
        raise CNIError(NOT_AVAILABLE, "nftables is not usable",
                       f"{problem}: ipMasq, macspoofchk, published ports, isolateNetworks and icc=false "
                       "need nftables (the nftables package: libnftables or nft on PATH)")


# (netns identity, endpoints' fingerprint) -> the nftables generation they were last found complete in
_complete: dict[tuple, int] = {}
_COMPLETE_MAX = 64


def missing_rules(endpoints: list[Endpoint], recorded_elements) -> str | None:
    """A description of the recorded nftables entries that are no longer in the kernel
    (e.g. our table was flushed or deleted), or None when all are there.

    Reading our tables back costs ~0.5 ms per pod (listing, JSON, comparing), and runtimes
    ask STATUS every few seconds per network (containerd 2.x). The kernel numbers its
    nftables transactions (linux/nft/generation.py): when neither that number nor this network's
    endpoints changed since all were found in place, they still are; the resident helper
    then answers without reading anything."""
    from ...linux.nft import generation as nftgen

    key = (netns.identity_of(netns.SELF), tuple((ep.id, len(ep.data.get("nft") or ())) for ep in endpoints))
    generation = nftgen.generation()
    if generation is not None and _complete.get(key) == generation:
        return None
    problem = _missing_rules(endpoints, recorded_elements)
    if problem is None and generation is not None and nftgen.generation() == generation:
        if len(_complete) >= _COMPLETE_MAX:
            _complete.clear()
        _complete[key] = generation
    return problem


def _missing_rules(endpoints: list[Endpoint], recorded_elements) -> str | None:
    """What audit() finds lacking for `endpoints`: the same judgement `cnmctl doctor` and
    `cnmctl gc` make (firewall.py), for one network."""
    from ...linux import nft

    wanted = [(ep.id, recorded_elements(ep)) for ep in endpoints]
    if not any(elements for _, elements in wanted):
        return None
    try:
        damage = nft.audit(wanted)
    except nft.NftError as exc:
        return f"cannot read nftables: {exc}"
    if not damage:
        return None
    problems = list(damage.layout.values())
    if damage.missing:
        by_id = {ep.id: ep for ep in endpoints}
        gone = {e.ident(): e for _, elements in damage.missing for e in elements}
        owners = sorted({by_id[owner].container_id for owner, _ in damage.missing})
        problems.append(f"{len(gone)} nftables entries of ours are missing ({next(iter(gone.values()))} ...); "
                        f"containers affected: {', '.join(owners)}")
    return "; ".join(problems) + "; `cnmctl gc` puts them back from the store"
