"""C-BBL, box offsets as distributions over a grid: the grid, its modes and their fitting, the distributions' losses."""
