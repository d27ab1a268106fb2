"""The reference's Python API (`pixel_compiler`, tdw419/geometry_os) on the pixelrts Rust core.

Code written against the reference runs unchanged: the same modules, classes, arguments,
defaults, return shapes and errors —

    pixel_compiler.pixelrts_mmap      MMapPixelRTSEncoder, MMapPixelRTSDecoder
    pixel_compiler.pixelrts_v2_core   PixelRTSEncoder, PixelRTSDecoder, calculate_grid_size
    python -m pixel_compiler.pixelrts_v2_converter INPUT OUTPUT

— with the reference's bugs (../shared/FORMAT.md §4) not copied: empty input encodes in
standard mode, a decoder never keeps the previous file's metadata, images of any size open,
the "memory-mapped" encoder streams instead of building the image in RAM, code mode keeps the
data. Where this layer differs on purpose, the docstring says so.
"""
