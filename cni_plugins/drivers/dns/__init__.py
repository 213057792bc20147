"""Names on a network: an embedded DNS server per network with `dnsEnabled`.

names.py (stdlib only, used by the controller's ADD): the config keys, the names of an
endpoint, what is recorded per endpoint and the ADD result's `dns` block.
zone.py, server.py, service.py (dnspython; only the resident helper and cnmctl import them):
the records read from the store, the server of one network, the servers of a helper.
Any driver whose endpoints reach a gateway on the host serves names by answering
Driver.name_server_addresses(); nothing here knows a driver.
"""
