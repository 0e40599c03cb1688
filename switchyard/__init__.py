"""Switchyard: the gateway-wide pieces (CLI, launcher, logging, names Envoy and ext_proc share)."""
