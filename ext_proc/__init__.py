"""Switchyard ext_proc server: decides routing and translates bodies for Envoy."""
