"""Arrays and files in and out: N-D arrays as planes (``planes``), TIFF / Zarr stores plane by plane (``stores``)."""
