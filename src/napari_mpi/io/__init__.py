"""Arrays and files in and out, plane by plane: N-D arrays as planes (``planes``); TIFF / Zarr / OME-Zarr stores
(``stores``, ``tiff_output``, ``png``); pixel sizes and units (``calibration``); reading with errors that name
the file and plane (``checked``); the command line's output and its resume record (``batch_output``); planes
fitted to a caller's ``out=`` array (``sinks``)."""
