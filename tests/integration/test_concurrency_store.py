"""Many processes opening a store that does not exist yet (the first pods on a new node)."""

from __future__ import annotations

import threading

from cni_plugins.cnm.store import Store


def test_first_opens_of_a_new_store_all_succeed(tmp_path):
    errors = []
    for trial in range(40):
        directory = str(tmp_path / f"s{trial}")

        def open_it():
            try:
                with Store(directory).transaction():
                    pass
            except Exception as exc:  # noqa: BLE001 - any failure is the bug
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
