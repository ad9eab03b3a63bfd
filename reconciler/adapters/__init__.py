"""Adapters: one side-effecting library each (yaml, libvirt, watchdog)."""
