"""Plugins turn one decoded image into another; see :mod:`stylebox.plugins.api`."""
