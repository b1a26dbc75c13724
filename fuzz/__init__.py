"""Fuzz targets for the frame decoder and the broker's request handling."""
