"""Our tables in the kernel: adding and removing elements, reading them back, checking and
repairing the layout. What the tables hold is layout.py and elements.py; how nft is run,
backend.py.

Each `commit()` is ONE nft transaction that adds and removes elements, checking the
layout's marker (an empty set named layout_<digest>) in the same transaction; only when that fails does it
(re)declare the layout — `add` of a table/set/chain is idempotent and base chains are
flushed and refilled with the same static rules — with the same elements. Removal is
"add, then delete" inside the same transaction, which succeeds whether or not the element
existed (nft 1.0.6 has no `destroy`), so DEL stays idempotent.

Self-healing: a flushed ruleset (a firewall reload) or a deleted table takes every
endpoint's elements with it. Whoever declares the layout again also puts back the elements
its caller says live endpoints need (commit()'s `restore`, restore()); audit() tells what is
missing. The caller knows them (the store's records); this module only compares and adds,
and never removes or replaces an element it did not own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from .backend import NftError, NftExists, NftNotFound, current
from .elements import Element, Wanted, add_commands, element_command, key_text, owner_of, parse
from .layout import LAYOUT, LAYOUT_SET, TABLE, declare, layout_current, marker

def set_elements(family: str, names: list[str]) -> list[tuple[Element, str]]:
    """(element, comment) of the named sets of our table of `family` (none when absent)."""
    out = []
    for name in names:
        try:
            data = list_json(["list", "set", family, TABLE, name])
        except NftNotFound:
            continue
        for item in data:
            for entry in (item.get("set") or {}).get("elem") or []:
                if isinstance(entry, dict) and "elem" in entry:
                    out.append((Element(family, name, entry["elem"]["val"]), entry["elem"].get("comment", "")))
                else:
                    out.append((Element(family, name, entry), ""))
    return out


def published(version: int, anywhere: bool = True) -> list[tuple[Element, str]]:
    """Published ports of one family with their comments: those bound to one host address,
    and (anywhere) those bound to every address. Reads whole maps: for the (usually tiny)
    map of address-bound ports, and for naming the owner once a conflict is known."""
    maps = [f"ports{version}_addr"] + ([f"ports{version}_any_addr"] if anywhere else [])
    return _elements("inet", maps)


def can_create(elements: Iterable[Element]) -> bool:
    """Would creating `elements` succeed, i.e. are none of their keys taken? One keyed
    lookup (`get element`) per element: constant cost, whatever the size of the maps
    (a dry-run transaction would answer too, but the kernel's abort of it waits for an
    RCU grace period, ~10 ms). No table or map yet: nothing is taken."""
    for element in elements:
        command = f"get element {element.family} {TABLE} {element.set} {{ {key_text(element.key)} }}"
        try:
            current().probe(command)
        except NftNotFound:
            continue
        return False
    return True


def commit(add: Iterable[Element] = (), remove: Iterable[Element] = (), owner: str = "",
           live: Callable[[], Wanted] | None = None) -> None:
    """One transaction: add `add`, remove `remove`, in tables whose layout is current.

    Re-declaring the layout (flushing and refilling the base chains) costs the kernel
    ~15 ms, a hundred times adding elements, so the first attempt only checks the
    layout's marker (see layout.layout_current) in the same transaction; when the table is
    missing or its layout is another (first use, an upgrade, a table deleted by hand, a
    flushed ruleset), the transaction is rolled back whole and repeated with the full
    declaration, and with what `live()` says live owners need that is missing (called only
    then: the caller's live endpoints, whose elements a flush took too)."""
    add, remove = list(add), list(remove)
    if not add and not remove:
        return
    families = sorted({e.family for e in add + remove})
    changes: list[dict] = []
    for element in remove:  # add-then-delete: succeeds whether or not it was there
        changes.append(element_command("add", element, owner))
        changes.append(element_command("delete", element, owner))
    for element in add:
        changes.append(element_command("add", element, owner))
    check = [layout_current(family) for family in families]
    try:
        run(check + changes)
        return
    except NftNotFound:
        pass
    wanted = live() if live is not None else []
    damage = audit(wanted, families)
    for family in families:  # (whatever the listing says: the check failed, so declare it)
        damage.layout.setdefault(family, "its layout check failed")
    try:
        run(_declare_commands(damage) + changes + _element_commands(damage))
        return
    except NftExists:
        if not damage.missing:
            raise
    # A key this command adds is one a live owner lost (a host port the flush freed): the
    # live owner gets it back first; this command then fails on the taken key, as it would
    # have had the flush never happened.
    restore(wanted, families)
    run(check + changes)


def owned(owner: str) -> list[Element]:
    """Every element of our tables whose comment is `owner` (reads the whole sets: for
    cleanup without a record; the normal path removes recorded elements by value)."""
    found = []
    for family in LAYOUT:
        for element, comment in _elements(family):
            if owner_of(comment) == owner:
                found.append(element)
    return found


def missing(elements: Iterable[Element]) -> list[Element]:
    """The subset of `elements` that is not in the kernel (for CHECK)."""
    wanted = list(elements)
    present = set()
    for family in sorted({e.family for e in wanted}):
        present.update(e.ident() for e, _ in _elements(family))
    return [e for e in wanted if e.ident() not in present]


def drifted_chains(families: Iterable[str]) -> list[str]:
    """Our base chains whose rules are not the layout's (flushed or edited by hand; commit()
    trusts the marker set and does not look), as "family chain" (for CHECK)."""
    out = []
    for family in sorted(set(families)):
        try:
            data = list_json(["list", "table", family, TABLE])
        except NftNotFound:
            out.extend(f"{family} {name}" for name in LAYOUT[family]["chains"])
            continue
        counts: dict[str, int] = {}
        for item in data:
            if "rule" in item:
                counts[item["rule"]["chain"]] = counts.get(item["rule"]["chain"], 0) + 1
        for name, (_, rules) in LAYOUT[family]["chains"].items():
            if counts.get(name, 0) != len(rules):
                out.append(f"{family} {name}")
    return out


def repair(family: str) -> bool:
    """Declare the layout again where our table of `family` exists but its chains drifted
    (for `cnmctl gc`); True when it did. A missing table is left missing."""
    tables = list_json(["list", "tables", family])
    if not any(item.get("table", {}).get("name") == TABLE for item in tables):
        return False
    if not drifted_chains([family]):
        return False
    run(declare(family, _stale_markers(family)))
    return True


@dataclass
class Damage:
    """What our tables lack against what they should hold (audit()): per family, why its
    layout must be declared again (table missing, another build's layout, a base chain's
    rules changed), and the missing elements of each owner."""

    layout: dict[str, str]  # family -> why
    stale_markers: dict[str, list[str]]  # family -> marker sets of other layouts, deleted on declaring
    missing: Wanted  # [(owner, its elements the kernel lacks)]

    def __bool__(self) -> bool:
        return bool(self.layout or self.missing)


def audit(wanted: Wanted, families: Iterable[str] = ()) -> Damage:
    """Compare our tables with `wanted` [(owner, elements)]: one listing per family of
    `families` and of the wanted elements. An element counts as present when an element of
    the same key is (whoever's: a key is never taken from another owner)."""
    families = sorted(set(families) | {e.family for _, els in wanted for e in els})
    damage = Damage({}, {}, [])
    present: set[str] = set()
    for family in families:
        try:
            data = list_json(["list", "table", family, TABLE])
        except NftNotFound:
            damage.layout[family] = f"table {family} {TABLE} is missing"
            continue
        present.update(e.ident() for e, _ in parse(family, data))
        sets = [item["set"]["name"] for item in data if "set" in item]
        damage.stale_markers[family] = [n for n in sets if n.startswith(LAYOUT_SET) and n != marker(family)]
        why = _layout_problem(family, data)
        if why:
            damage.layout[family] = why
    for owner, elements in wanted:
        gone = [e for e in elements if e.ident() not in present]
        if gone:
            damage.missing.append((owner, gone))
    return damage


def _layout_problem(family: str, data: list[dict]) -> str:
    """Why the listing `data` of our table of `family` is not the layout ("" when it is)."""
    names = {item["set"]["name"] for item in data if "set" in item}
    if marker(family) not in names:
        return f"table {family} {TABLE} has another layout (an upgrade, or sets deleted by hand)"
    counts: dict[str, int] = {}
    chains = {item["chain"]["name"] for item in data if "chain" in item}
    for item in data:
        if "rule" in item:
            counts[item["rule"]["chain"]] = counts.get(item["rule"]["chain"], 0) + 1
    for name, (_, rules) in LAYOUT[family]["chains"].items():
        if name not in chains:
            return f"chain {family} {TABLE} {name} is missing"
        if counts.get(name, 0) != len(rules):
            return f"chain {family} {TABLE} {name} does not hold our rules (flushed or edited)"
    return ""


def _declare_commands(damage: Damage) -> list[dict]:
    return [cmd for family in sorted(damage.layout) for cmd in declare(family, damage.stale_markers.get(family, ()))]


def _element_commands(damage: Damage) -> list[dict]:
    return [cmd for owner, elements in damage.missing for cmd in add_commands(elements, owner)]


def restore(wanted: Wanted, families: Iterable[str] = ()) -> Damage:
    """Put back what audit() finds lacking, in one transaction: the layout declared again
    where it is not whole, then the missing elements added (nothing present is removed or
    replaced). Returns what it put back (falsy: nothing lacked). A key taken between the
    listing and the transaction (a command publishing the same port) fails the
    transaction: listed and tried once more."""
    families = list(families)
    for attempt in (1, 2):
        damage = audit(wanted, families)
        if not damage:
            return damage
        try:
            run(_declare_commands(damage) + _element_commands(damage))
            return damage
        except NftExists:
            if attempt == 2:
                raise
    return damage


def elements_with_comments(family: str) -> list[tuple[Element, str]]:
    """Every element of our table of `family` with its comment (its owner): for sweeps."""
    return _elements(family)


def _elements(family: str, maps: list[str] | None = None) -> list[tuple[Element, str]]:
    """(element, comment) of our table of `family`, or of the named maps only."""
    try:
        if maps:
            data = [item for name in maps for item in list_json(["list", "map", family, TABLE, name])]
        else:
            data = list_json(["list", "table", family, TABLE])
    except NftNotFound:
        return []
    return parse(family, data)


def _stale_markers(family: str) -> list[str]:
    """Marker sets of other layouts in our table of `family` (an upgrade leaves one)."""
    try:
        data = list_json(["list", "sets", family])
    except NftError:
        return []
    names = [item["set"]["name"] for item in data if "set" in item and item["set"].get("table") == TABLE]
    return [n for n in names if n.startswith(LAYOUT_SET) and n != marker(family)]


def run(commands: list[dict]) -> None:
    """Apply `commands` (nft JSON) as one transaction."""
    current().run(commands)


def list_json(args: list[str]) -> list[dict]:
    """`nft -j ARGS` (a list or get command) as JSON."""
    return current().query(" ".join(args))

