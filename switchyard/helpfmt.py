"""One argparse help formatter for every `switchyard` command: each option's help ends with its
default, except where there is none to show (required options, flags, unset optionals)."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default in (None, False) or isinstance(
                action.default, list):
            return action.help or ""
        return super()._get_help_string(action) or ""
