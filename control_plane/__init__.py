"""Switchyard control plane: owns the config, compiles it, serves it over xDS and RoutingTable."""
