"""Providers: presets aside (config), how to talk to one (`dialects`, pure), send to it (`client`, IO),
what its failure means (`classify`), which to try first (`routing`) and `checks` of keys and credit."""
