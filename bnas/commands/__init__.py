"""One module per ``bnas`` verb; :mod:`bnas.cli` discovers them."""
