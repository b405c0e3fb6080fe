"""The toolkit's door to Rucio: :class:`~.ops.RucioOps` over rucio-clients, one module per resource."""
