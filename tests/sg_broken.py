"""A module that fails while importing, for the .sg import error test."""

raise RuntimeError("this module is broken on purpose")
