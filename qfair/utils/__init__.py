"""Small shared helpers: errors, registries, atomic I/O, safe loading."""
