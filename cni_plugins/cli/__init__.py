"""Entry points: the multi-call plugin executable and cnmctl."""
