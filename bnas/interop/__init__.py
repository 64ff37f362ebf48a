"""Bringing the seed projects' released checkpoints into bnas (``bnas import``).

:mod:`~bnas.interop.reading` opens a checkpoint safely and finds its state dict,
:mod:`~bnas.interop.names` and :mod:`~bnas.interop.sources` say what the projects call each
tensor, :mod:`~bnas.interop.convert` matches them to a bnas network and
:func:`bnas.interop.importer.import_checkpoint` writes the bnas weights file. (Nothing is
imported here, so that the command line can list the sources without loading torch.)
"""
