"""The imperative shell: observing libvirt, executing plans, running passes."""
