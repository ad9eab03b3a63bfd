"""The pure core: values, validation, diff and plans; no I/O, no libvirt, no logging."""
